"""prune_lab.distill.features: feature pairs for every student a plan describes (issue 19), and the run's record.

The pairs come from the structure (which teacher stage or unit a student feature came from, and at which resolution
level both run); a wrong pairing is a bug and fails as a RuntimeError, never as a ValueError (a user error).
"""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch
from conftest import TINY_SD, TINY_SDXL, tiny_unet, unet_inputs
from diffusers import DDPMScheduler
from test_distill import write_image_folder

from prune_lab import load_unet, walk
from prune_lab.backbones import build_student, make_plan, resolve
from prune_lab.backbones.unet.compaction import unit_map
from prune_lab.backbones.unet.features import stage_levels, stage_of
from prune_lab.distill.encoders import FrozenEncoders
from prune_lab.distill.features import FeaturePair, FeaturePoint, FeatureTap, feature_pairing
from prune_lab.distill.files import load_student
from prune_lab.distill.losses import DistillationLoss
from prune_lab.distill.recipe import DistillConfig, DistillRecipe
from prune_lab.distill.step import DistillStep, step_generator
from prune_lab.formats.block import apply_plan
from prune_lab.runtime.loading import LoadedModel
from prune_lab.scoring import get_criterion
from prune_lab.scoring.groups import score_units
from prune_lab.scoring.registry import ScoringInputs
from prune_lab.search import build_problem, pareto_front

LATENT = 8  # the smallest latent the 4-level demo U-Net takes (8 -> 4 -> 2 -> 1)


def _keep_without(unet, removed_prefixes: tuple[str, ...], actions: dict | None = None):
    """A plan keeping every atom except those under `removed_prefixes` (and the skips of removed consumers)."""
    graph = walk(unet)
    gone = {u.name for u in graph.atoms() if u.name.removeprefix("skip:").startswith(removed_prefixes)}
    gone |= {u.name for u in graph.atoms() if u.name.startswith(removed_prefixes)}
    keep = [u.name for u in graph.atoms() if u.name not in gone]
    return make_plan(unet, keep, source="tiny", actions=actions)


def _features(model, points, inputs):
    tap = FeatureTap(model, points)
    with torch.no_grad(), tap.capturing():
        model(**inputs)
        values = tap.collect()
    tap.remove()
    return values


def _check_shapes(teacher, student, pairing) -> None:
    inputs = unet_inputs(teacher, batch=1)
    t_feats = _features(teacher, [p.teacher for p in pairing.pairs], inputs)
    s_feats = _features(student, [p.student for p in pairing.pairs], inputs)
    assert [tuple(f.shape) for f in s_feats] == [tuple(f.shape) for f in t_feats]


# ------------------------------------------------------------------------------------- level removal, by hand
@pytest.fixture(scope="module")
def level_removed():
    """TINY_SD without its innermost level (D4 + U1, as the search's `level` move); the mid stage stays."""
    teacher = tiny_unet(TINY_SD)
    compacted = build_student(teacher, _keep_without(teacher, ("down_blocks.3", "up_blocks.0")))
    assert compacted.resolution.removed_levels == 1 and compacted.student.mid_block is not None
    return teacher, compacted


def test_level_removal_stage_pairs_by_hand(level_removed):
    teacher, compacted = level_removed
    pairing = feature_pairing(teacher, compacted.student, compacted.resolution, unit_map(compacted.student))
    assert [(str(p.teacher), str(p.student)) for p in pairing.pairs] == [
        ("down_blocks.0", "down_blocks.0"),
        ("down_blocks.1", "down_blocks.1"),
        ("down_blocks.2.downsamplers.0:input", "down_blocks.2"),  # the student's last down stage lost its sampler
        ("up_blocks.1", "up_blocks.0"),
        ("up_blocks.2", "up_blocks.1"),
        ("up_blocks.3", "up_blocks.2"),
    ]
    assert [p.teacher.level for p in pairing.pairs] == [1, 2, 2, 1, 0, 0]
    # the student's mid stage runs at level 2, the teacher's at level 3: no counterpart for either
    assert list(pairing.teacher_unpaired) == ["down_blocks.3", "mid_block", "up_blocks.0"]
    assert list(pairing.student_unpaired) == ["mid_block"]
    assert "level 2" in pairing.student_unpaired["mid_block"] and "level 3" in pairing.teacher_unpaired["mid_block"]
    _check_shapes(teacher, compacted.student, pairing)


def test_level_removal_unit_pairs_by_hand(level_removed):
    teacher, compacted = level_removed
    pairing = feature_pairing(teacher, compacted.student, compacted.resolution, unit_map(compacted.student), "units")
    chosen = [(p.teacher.module, p.student.module) for p in pairing.pairs]
    up = [(t, s) for t, s in chosen if s.startswith("up_blocks.0.")]
    assert up == [  # student module order: diffusers registers an up stage's attentions before its resnets
        ("up_blocks.1.attentions.0", "up_blocks.0.attentions.0"),
        ("up_blocks.1.attentions.0.transformer_blocks.0", "up_blocks.0.attentions.0.transformer_blocks.0"),
        ("up_blocks.1.attentions.1", "up_blocks.0.attentions.1"),
        ("up_blocks.1.attentions.1.transformer_blocks.0", "up_blocks.0.attentions.1.transformer_blocks.0"),
        ("up_blocks.1.attentions.2", "up_blocks.0.attentions.2"),
        ("up_blocks.1.attentions.2.transformer_blocks.0", "up_blocks.0.attentions.2.transformer_blocks.0"),
        ("up_blocks.1.resnets.0", "up_blocks.0.resnets.0"),
        ("up_blocks.1.resnets.1", "up_blocks.0.resnets.1"),
        ("up_blocks.1.resnets.2", "up_blocks.0.resnets.2"),
    ]
    assert all(t == s for t, s in chosen if s.startswith("down_blocks."))  # down stages keep their names
    mid = ["mid_block.resnets.0", "mid_block.attentions.0", "mid_block.attentions.0.transformer_blocks.0"]
    mid.append("mid_block.resnets.1")
    removed = ["down_blocks.3.resnets.0", "down_blocks.3.resnets.1"] + [f"up_blocks.0.resnets.{j}" for j in range(3)]
    assert sorted(pairing.teacher_unpaired) == sorted(removed + mid)
    assert sorted(pairing.student_unpaired) == sorted(mid)
    assert len(chosen) == 3 * 6 + 3 * 9  # down_blocks.0-2: 2 x (R, A, T); up_blocks.1-3: 3 x (R, A, T)
    _check_shapes(teacher, compacted.student, pairing)


def test_a_wrong_pairing_is_a_bug_not_a_user_error(level_removed):
    """Pairing the student's mid stage with the teacher's (different resolutions) fails before the loss."""
    teacher, compacted = level_removed
    assert stage_levels(compacted.student)["mid_block"] == (2, 2) and stage_levels(teacher)["mid_block"] == (3, 3)
    wrong = [FeaturePair(FeaturePoint("mid_block", level=3), FeaturePoint("mid_block", level=3))]
    step = DistillStep(
        teacher, compacted.student, FrozenEncoders(None, None, 1.0), DDPMScheduler(), DistillationLoss(), wrong
    )
    try:
        with pytest.raises(RuntimeError, match="feature pairing is wrong") as err:
            step(_latent_batch(teacher), step_generator(0, 0))
    finally:
        step.remove_hooks()
    assert not isinstance(err.value, ValueError)
    assert not step.student_tap._values  # nothing kept alive by the failed check


def test_a_student_that_disagrees_with_its_plan_is_a_bug(level_removed):
    """A stage at another level than the one it came from (outside the mid stage) is never silently dropped."""
    teacher, compacted = level_removed
    student = copy.deepcopy(compacted.student)
    student.down_blocks[0].downsamplers = None  # everything after it now runs one level finer than in the teacher
    with pytest.raises(RuntimeError, match="disagrees with its plan"):
        feature_pairing(teacher, student, compacted.resolution, unit_map(compacted.student))


# --------------------------------------------------------------------------- every other kind of student
def _substitute_plan(unet):
    return _keep_without(unet, ("down_blocks.1.resnets.0",), {"down_blocks.1.resnets.0": "interpolate"})


def _dropped_and_zeroed_skips(unet):
    plan = _keep_without(unet, ("skip:up_blocks.1.resnets.1", "skip:up_blocks.2.resnets.0"))
    plan.actions = {"skip:up_blocks.2.resnets.0": "zero"}
    return plan


def _layers_plan(unet):
    return _keep_without(unet, tuple(f"down_blocks.2.attentions.0.transformer_blocks.{k}" for k in range(3, 10)))


STUDENTS = {
    "no-mid": (TINY_SD, lambda u: _keep_without(u, ("mid_block",))),
    "emptied-stage": (
        TINY_SD,
        lambda u: _keep_without(u, ("down_blocks.3", "up_blocks.0.resnets.0", "up_blocks.0.resnets.1")),
    ),
    "two-levels": (  # as the demo model's 32/64/64/64: the kept mid stage moves from level 3 to level 1
        {**TINY_SD, "block_out_channels": (16, 32, 32, 32)},
        lambda u: _keep_without(u, ("down_blocks.2", "down_blocks.3", "up_blocks.0", "up_blocks.1")),
    ),
    "substitute": (TINY_SD, _substitute_plan),
    "skips": (TINY_SD, _dropped_and_zeroed_skips),
    "transformer-layers": (TINY_SDXL, _layers_plan),
}


STAGES_UNPAIRED = {  # teacher stages without a student counterpart, by hand
    "no-mid": ["mid_block"],
    "two-levels": ["down_blocks.2", "down_blocks.3", "mid_block", "up_blocks.0", "up_blocks.1"],
}


@pytest.mark.parametrize("case", list(STUDENTS))
@pytest.mark.parametrize("layers", ["stages", "units"])
def test_every_kind_of_student_pairs_features_of_equal_shape(case, layers):
    config, plan_of = STUDENTS[case]
    teacher = tiny_unet(config)
    compacted = build_student(teacher, plan_of(teacher))
    pairing = feature_pairing(teacher, compacted.student, compacted.resolution, unit_map(compacted.student), layers)
    _check_accounting(teacher, compacted.resolution, pairing)
    _check_shapes(teacher, compacted.student, pairing)
    if layers == "stages":  # an emptied stage whose level stays (down_blocks.3) is still paired
        assert list(pairing.teacher_unpaired) == STAGES_UNPAIRED.get(case, [])
        assert list(pairing.student_unpaired) == (["mid_block"] if case == "two-levels" else [])
    if case == "substitute" and layers == "units":
        assert list(pairing.student_unpaired) == ["down_blocks.1.resnets.0"]
    if case == "skips":
        modes = {slot.skip: slot.skip_mode for stage in compacted.resolution.up for slot in stage.slots}
        assert (modes["skip:up_blocks.1.resnets.1"], modes["skip:up_blocks.2.resnets.0"]) == ("drop", "zero")


def _check_accounting(teacher, resolution, pairing) -> None:
    """Every teacher feature of the kind is paired or said to be unpaired; paired points share their level."""
    assert all(p.teacher.level == p.student.level is not None for p in pairing.pairs)
    if pairing.layers == "stages":
        paired = {stage_of(p.teacher.module) for p in pairing.pairs}
        expected = [u.name for u in resolution.graph.of_kind("stage", "mid")]
    else:
        paired = {p.teacher.module for p in pairing.pairs}
        expected = [u.name for u in resolution.graph.of_kind("resnet", "attention", "transformer_layer")]
    assert len(paired) == len(pairing.pairs) and not paired & set(pairing.teacher_unpaired)
    assert sorted(paired | set(pairing.teacher_unpaired)) == sorted(expected)


# ------------------------------------------------------------------------- every plan on the --pareto path
def _magnitude_scores(unet) -> pd.DataFrame:
    graph = walk(unet)
    scorer = get_criterion("magnitude").build(ScoringInputs(unet, graph))
    units = score_units(graph, "blocks")
    return pd.DataFrame(
        {
            "name": [u.name for u in units],
            "criterion": "magnitude",
            "importance": [scorer(u).importance for u in units],
        }
    )


def _latent_batch(unet, seed: int = 0) -> dict:
    """A cached-latents batch of one (posterior moments + conditioning) at LATENT x LATENT."""
    g = torch.Generator().manual_seed(seed)
    inputs = unet_inputs(unet, batch=1, seed=seed)
    cond = {"encoder_hidden_states": inputs["encoder_hidden_states"], **inputs.get("added_cond_kwargs", {})}
    return {"moments": torch.randn(1, 2 * unet.config.in_channels, LATENT, LATENT, generator=g), "cond": cond}


TEACHERS = {"demo": lambda: load_unet("demo").unet, "tiny-sdxl": lambda: tiny_unet(TINY_SDXL)}


def _pareto_path(name: str):
    """The teacher, its search problem (magnitude scores) and every plan `plan --pareto` lists (as atom sets)."""
    teacher = TEACHERS[name]().requires_grad_(False)
    problem = build_problem(teacher, _magnitude_scores(teacher), source=name)
    front = pareto_front(problem, "params", exact=False)  # every plan the strategies pass through, presets too
    return teacher, problem, [frozenset(r.split(";")) if r else frozenset() for r in front["removed"]]


def _export_and_distil(teacher, problem, removed_sets, folder) -> set[int]:
    """Export every plan, load it as `distill` does, run one step per `--feature-layers`; the levels removed."""
    encoders, scheduler = FrozenEncoders(None, None, 0.18215), DDPMScheduler()
    batch, levels_removed = _latent_batch(teacher), set()
    for i, removed in enumerate(removed_sets):
        apply_plan(LoadedModel(teacher, problem.source, "unet"), problem.plan(removed), folder / str(i))
        bundle = load_student(folder / str(i), teacher)
        levels_removed.add(bundle.resolution.removed_levels)
        student = bundle.unet.train()
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
        for layers in ("stages", "units"):
            pairing = feature_pairing(teacher, student, bundle.resolution, bundle.unit_map, layers)
            _check_accounting(teacher, bundle.resolution, pairing)
            step = DistillStep(teacher, student, encoders, scheduler, DistillationLoss(), pairing.pairs)
            terms = step(batch, step_generator(0, i))
            step.remove_hooks()
            optimizer.zero_grad()
            terms.total.backward()
            optimizer.step()
            assert torch.isfinite(terms.total) and len(terms.per_feature) == len(pairing.pairs)
    return levels_removed


def test_the_demo_pareto_plans_that_remove_levels_distil(tmp_path):
    """The issue's path (score -> plan -> apply -> distill on the demo): D4+U1, then D3+U2 (and, on the exact
    solver's front, a third level), the mid stage kept.

    The largest and the smallest plan for each number of levels removed (all of them: the slow test below).
    """
    teacher, problem, plans = _pareto_path("demo")
    by_levels: dict[int, list[frozenset]] = {}
    for removed in plans:
        by_levels.setdefault(resolve(problem.plan(removed), problem.graph).removed_levels, []).append(removed)
    chosen = [p for count, group in by_levels.items() if count for p in {min(group, key=len), max(group, key=len)}]
    assert {1, 2} <= set(by_levels)
    assert _export_and_distil(teacher, problem, chosen, tmp_path) == set(by_levels) - {0}


@pytest.mark.slow  # ~90 plans, each exported, reloaded (most of the time) and distilled: ~3 min of CPU
@pytest.mark.parametrize("name", list(TEACHERS))
def test_every_pareto_plan_exports_and_distils_one_step(name, tmp_path):
    teacher, problem, plans = _pareto_path(name)
    levels_removed = _export_and_distil(teacher, problem, plans, tmp_path)
    assert 0 in levels_removed and (name != "demo" or {1, 2} <= levels_removed)


# ------------------------------------------------------------------------------------------- the run record
def test_the_run_record_lists_the_pairs_and_the_unpaired_teacher_features(tiny_pipeline_dir, tmp_path):
    loaded = load_unet(tiny_pipeline_dir)
    apply_plan(loaded, _keep_without(loaded.unet, ("down_blocks.3", "up_blocks.0")), tmp_path / "student")
    images = write_image_folder(tmp_path / "images", n=2, corrupt=False)
    cfg = DistillConfig(
        teacher=str(tiny_pipeline_dir),
        student=str(tmp_path / "student"),
        data=str(images),
        out=str(tmp_path / "run"),
        max_steps=1,
        batch_size=2,
        grad_accum=1,
        resolution=32,
        num_workers=0,
        checkpoint_every=0,
        progress=False,
    )
    result = DistillRecipe(cfg).run()
    record = json.loads((result.out_dir / "distill_config.json").read_text())
    assert record["max_steps"] == 1  # still the config
    pairs = record["feature_pairs"]
    assert pairs["layers"] == "stages"
    assert [(p["teacher"], p["student"]) for p in pairs["pairs"]][2:4] == [
        ("down_blocks.2.downsamplers.0:input", "down_blocks.2"),
        ("up_blocks.1", "up_blocks.0"),
    ]
    assert list(pairs["teacher_unpaired"]) == ["down_blocks.3", "mid_block", "up_blocks.0"]
    assert list(pairs["student_unpaired"]) == ["mid_block"]
    header = (result.out_dir / "losses.csv").read_text().splitlines()[0].split(",")
    assert [c for c in header if c.startswith("feat:")] == [f"feat:{p['student']}" for p in pairs["pairs"]]
