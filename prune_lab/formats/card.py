"""Model cards: the `README.md` every export folder gets, in the Hugging Face model-card form (YAML front matter hubs
read, then what the student is, how it was made, its cost and how to load it).

The facts (:class:`CardFacts`) are kept in the front matter under `prune_lab:`, so that later steps update a card
without recomputing it: `distill` adds the retraining recipe, a single-file checkpoint adds itself to "how to load".
Params and MACs are the reporter's (`prunelab report`): one U-Net step at the U-Net's `sample_size` under the thop
convention (:mod:`prune_lab.runtime.counting`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..runtime.atomic import write_text
from ..runtime.loading import looks_like_hub_id

CARD_NAME = "README.md"
#: Front-matter key holding :class:`CardFacts`.
FACTS_KEY = "prune_lab"
_PIPELINE_TAGS = {"StableDiffusionPipeline": "text-to-image", "StableDiffusionXLPipeline": "text-to-image"}


@dataclass
class CardFacts:
    """What a model card says, as data.

    Attributes:
        teacher: the `--model` the student was pruned from.
        pipeline: the export's pipeline class (`model_index.json`), or None for a bare U-Net.
        how: how the plan was made (`preset`, `search`, `width` or `plan`) and its settings.
        removed: the units the plan removes (graph-walker names).
        teacher_params / student_params / teacher_macs / student_macs: U-Net, one step (the reporter's numbers).
        latent: the latent side those MACs are at.
        loader: `diffusers` (a stock `UNet2DConditionModel` folder) or `load_pruned`.
        export_format: the export marker's format, None for plain diffusers.
        single_file: a single-file checkpoint written from this export, if any.
        retraining: the distillation recipe, None when nothing was retrained.
    """

    teacher: str
    pipeline: str | None
    how: dict
    removed: list[str]
    teacher_params: int
    student_params: int
    teacher_macs: int
    student_macs: int
    latent: int
    loader: str
    export_format: str | None = None
    single_file: str | None = None
    retraining: dict | None = field(default=None)


def _profile(model, latent: int):
    from ..backbones import backbone_for
    from ..runtime.counting import profile_call

    fn, args = backbone_for(model).example_call(model, latent)
    return profile_call(model, fn, *args)


def _how(plan) -> dict:
    meta = plan.meta
    if meta.get("width_pruned"):
        return {"kind": "width", **{k: v for k, v in meta.items() if k in ("criterion", "target", "round_to")}}
    if "preset" in meta:
        return {"kind": "preset", "preset": meta["preset"], "layer_choice": meta.get("layer_choice")}
    if "search" in meta:
        search = meta["search"]
        return {"kind": "search", **{k: search.get(k) for k in ("criterion", "target", "strategy")}}
    return {"kind": "plan"}


def card_facts(folder: Path, plan, teacher, student, source: str, export_format: str | None = None) -> CardFacts:
    """The facts of the export being written in `folder` (its `model_index.json`, if any, already there).

    Args:
        plan: the export's plan; teacher / student: the U-Nets before and after (real or `meta` weights).
        source: the teacher's `--model`.
        export_format: the export marker's format, None for a plain diffusers U-Net.
    """
    from ..backbones import backbone_for, resolve, walk
    from ..plan import fingerprint

    latent = backbone_for(teacher).latent_size(teacher)
    before, after = _profile(teacher, latent), _profile(student, latent)
    index = folder / "model_index.json"
    pipeline = json.loads(index.read_text()).get("_class_name") if index.is_file() else None
    removed = [] if plan.meta.get("width_pruned") else resolve(plan, walk(teacher), fingerprint(teacher)).removed
    removed = [u for u in removed if not any(u.startswith(f"{v}.") for v in removed)]  # a unit, not its parts
    return CardFacts(
        teacher=str(source),
        pipeline=pipeline,
        how=_how(plan),
        removed=list(removed),
        teacher_params=before.params,
        student_params=after.params,
        teacher_macs=before.macs,
        student_macs=after.macs,
        latent=latent,
        loader="diffusers" if export_format is None else "load_pruned",
        export_format=export_format,
    )


# ------------------------------------------------------------------------------------------------------ render
def _metadata(facts: CardFacts) -> str:
    from huggingface_hub import ModelCardData

    tags = ["pruning", "prune_lab", "knowledge-distillation" if facts.retraining else "block-pruning"]
    if facts.pipeline:
        tags += ["text-to-image", "stable-diffusion" + ("-xl" if "XL" in facts.pipeline else "")]
    data = ModelCardData(
        library_name="diffusers" if facts.loader == "diffusers" else "prune_lab",
        base_model=facts.teacher if looks_like_hub_id(facts.teacher) and not Path(facts.teacher).exists() else None,
        tags=tags,
        pipeline_tag=_PIPELINE_TAGS.get(facts.pipeline or ""),
        **{FACTS_KEY: asdict(facts)},
    )
    return data.to_yaml()


def _how_text(how: dict) -> str:
    kind = how["kind"]
    if kind == "preset":
        return f"the preset `{how['preset']}` (`prunelab apply --preset {how['preset']}`)"
    if kind == "search":
        return (
            f"budgeted search: criterion `{how['criterion']}`, budget `{how['target']}`, strategy `{how['strategy']}`"
        )
    if kind == "width":
        return f"width (channel) pruning: criterion `{how.get('criterion')}`, target `{how.get('target')}`"
    return "a hand-written plan (`plan.json`)"


def _numbers(f: CardFacts) -> list[str]:
    def row(name: str, before: int, after: int, scale: float, unit: str) -> str:
        return f"| {name} | {before / scale:.3f} {unit} | {after / scale:.3f} {unit} | {100 * after / before:.1f}% |"

    return [
        f"U-Net, one denoising step at latent {f.latent}x{f.latent} (thop convention, as `prunelab report`):",
        "",
        "| | teacher | student | student / teacher |",
        "|---|---|---|---|",
        row("params", f.teacher_params, f.student_params, 1e6, "M"),
        row("MACs", f.teacher_macs, f.student_macs, 1e9, "G"),
    ]


def _loading(f: CardFacts) -> list[str]:
    if f.loader == "diffusers":
        part = (
            f"from diffusers import {f.pipeline}\npipe = {f.pipeline}.from_pretrained('PATH')"
            if f.pipeline
            else "from diffusers import UNet2DConditionModel\nunet = UNet2DConditionModel.from_pretrained('PATH/unet')"
        )
        lines = ["The U-Net is a stock diffusers `UNet2DConditionModel` folder: no prune_lab needed.", ""]
    else:
        part = "import prune_lab\nunet = prune_lab.load_pruned('PATH')"
        lines = [f"The U-Net (`{f.export_format}`) has no stock diffusers config: load it with prune_lab.", ""]
    lines += ["```python", part, "```"]
    if f.single_file:
        lines += [
            "",
            f"Single-file (original LDM layout, A1111 / ComfyUI key names): `{f.single_file}`; diffusers reads it",
            f"with `{f.pipeline or 'UNet2DConditionModel'}.from_single_file(FILE, config='PATH')`.",
        ]
    return lines


def _retraining(f: CardFacts) -> list[str]:
    if not f.retraining:
        return [
            "None: the student's weights are the teacher's, copied unit by unit (retrain it with `prunelab distill`)."
        ]
    lines = ["Knowledge distillation from the teacher (BK-SDM §3.2, `prunelab distill`):", ""]
    lines += [f"- {key}: {value}" for key, value in f.retraining.items()]
    return lines


def render_card(facts: CardFacts) -> str:
    """The `README.md` text of `facts`: front matter, then teacher, plan, removed units, cost, loading, retraining."""
    removed = ", ".join(f"`{u}`" for u in facts.removed) if facts.removed else "none (widths only)"
    body = [
        f"# Pruned student of {facts.teacher}",
        "",
        f"Written by prune_lab. Teacher: `{facts.teacher}`" + (f" ({facts.pipeline})." if facts.pipeline else "."),
        "",
        "## Plan",
        "",
        f"Made with {_how_text(facts.how)}; the full plan is `plan.json`, student -> teacher modules `unit_map.json`.",
        "",
        f"Removed units ({len(facts.removed)}): {removed}",
        "",
        "## Size",
        "",
        *_numbers(facts),
        "",
        "## How to load",
        "",
        *_loading(facts),
        "",
        "## Retraining",
        "",
        *_retraining(facts),
    ]
    return f"---\n{_metadata(facts).rstrip()}\n---\n\n" + "\n".join(body) + "\n"


# ------------------------------------------------------------------------------------------------ read, update
def write_card(folder: Path, facts: CardFacts) -> Path:
    """Write `folder/README.md` atomically."""
    return write_text(Path(folder) / CARD_NAME, render_card(facts))


def read_card(folder: Path) -> CardFacts | None:
    """The facts of the card prune_lab wrote in `folder`, or None when there is none (or it is not prune_lab's)."""
    from huggingface_hub import ModelCard

    path = Path(folder) / CARD_NAME
    if not path.is_file():
        return None
    try:
        data = ModelCard.load(path).data.to_dict()
    except Exception:  # noqa: BLE001  (any card that does not parse is not one prune_lab wrote)
        return None
    facts = data.get(FACTS_KEY)
    try:
        return CardFacts(**facts) if isinstance(facts, dict) else None
    except TypeError:
        return None


def update_card(folder: Path, **changes) -> Path | None:
    """Rewrite the card prune_lab wrote in `folder` with `changes` to its facts; None (nothing written) without one."""
    facts = read_card(folder)
    if facts is None:
        return None
    for key, value in changes.items():
        setattr(facts, key, value)
    return write_card(folder, facts)
