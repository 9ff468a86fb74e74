"""The one CLIP loader and scorer (prune_lab/runtime/clip.py): the registry of named scorers, the demo's
``demo-clip`` found by name without general code importing the demo, scores unchanged by the move, and no file at
a predictable path in the shared temp folder. Nothing is downloaded."""

from __future__ import annotations

import ast
import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.functional import to_pil_image

import prune_lab
from prune_lab.demo.world import World
from prune_lab.evaluation.metrics import clip_scores
from prune_lab.runtime import clip as rc
from prune_lab.runtime.registry import Registry

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}

#: Computed with the pre-move code (scoring.clip.load_clip("demo-clip", checkpoint=...), evaluation.metrics's
#: load_clip + clip_scores, demo.clip.fid_extractor) on the first 4 held-out scenes of World(0).
DEMO_SCORES = [0.9627264738082886, 0.9645657539367676, 0.9629237055778503, 0.948875904083252]
DEMO_SCORES_REVERSED = [0.21253788471221924, 0.9645657539367676, 0.9629237055778503, 0.2664008140563965]
DEMO_FILE_SCORES = [0.9627264142036438, 0.9645657539367676, 0.9629237651824951, 0.948875904083252]
DEMO_FID_FEATURE_SUM = -79.26830641180277


@pytest.fixture
def registry(monkeypatch):
    """A copy of the CLIP scorer registry (built-ins loaded), so registrations here do not leak into other tests."""
    fresh = Registry("CLIP scorer", hint=rc.CLIP_SCORERS.hint)
    for name, spec in rc.CLIP_SCORERS.items():
        fresh.register(name, spec)
    monkeypatch.setattr(rc, "CLIP_SCORERS", fresh)
    return fresh


@pytest.fixture
def tiny_scorer(tmp_path):
    """Register-able parts of a random tiny open_clip model: a setup that adds its config, and its checkpoint."""
    import open_clip

    config = tmp_path / "prunelab-registry-clip.json"
    config.write_text(json.dumps(TINY_CLIP))

    def setup() -> str:
        if config.stem not in open_clip.list_models():
            open_clip.add_model_config(config)
        return config.stem

    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny.pt"
    torch.save(open_clip.create_model(setup()).state_dict(), checkpoint)
    return setup, checkpoint


@pytest.fixture(scope="module")
def scenes():
    images, scenes = World(0).batch("heldout", 0, 4)
    return images, [to_pil_image(x) for x in images], [s.caption for s in scenes]


# ---------------------------------------------------------------------------------------------------- registry
def test_registered_scorer_loads_by_name_with_its_checkpoint(registry, tiny_scorer, tmp_path):
    setup, checkpoint = tiny_scorer
    spec = rc.register_clip("tiny-scorer", setup, checkpoint=checkpoint, description="a test scorer")
    assert registry.get("tiny-scorer") is spec and spec.checkpoint == checkpoint
    assert registry.names() == ["demo-clip", "tiny-scorer"]  # the demo's came in through BUILTIN_SCORERS

    scorer = rc.load_clip("tiny-scorer")  # no checkpoint given: the registered one, not the pretrained tag
    state = torch.load(checkpoint)
    assert all(torch.equal(v, state[k]) for k, v in scorer.model.state_dict().items())
    assert scorer.name == f"tiny-scorer {checkpoint}"

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    texts = ["a red cat", "two dogs", "a tree"]
    with torch.no_grad():
        img = scorer.model.encode_image(torch.stack([scorer.preprocess(im) for im in images]))
        txt = scorer.model.encode_text(scorer.tokenizer(texts))
    np.testing.assert_allclose(scorer(images, texts).numpy(), F.cosine_similarity(img, txt).numpy(), atol=1e-6)

    with pytest.raises(ValueError, match="already registered"):
        rc.register_clip("tiny-scorer", setup)


def test_a_typo_names_the_closest_scorer(registry, tiny_scorer):
    rc.register_clip("tiny-scorer", tiny_scorer[0], checkpoint=tiny_scorer[1])
    with pytest.raises(ValueError, match=r"unknown CLIP scorer 'tiny-scorr'; did you mean 'tiny-scorer'\?"):
        registry.get("tiny-scorr")
    with pytest.raises(ValueError, match=r"unknown --clip-model 'tiny-scorr'; did you mean 'tiny-scorer'\?"):
        rc.load_clip("tiny-scorr")
    with pytest.raises(ValueError, match=r"did you mean 'demo-clip'\?"):
        rc.load_clip("demo-clp")
    with pytest.raises(FileNotFoundError, match="--clip-checkpoint .*nope.pt: no such file"):
        rc.load_clip("tiny-scorer", checkpoint="nope.pt")


def test_general_modules_never_import_the_demo():
    root = Path(prune_lab.__file__).parent
    offenders = []
    for package in ("runtime", "scoring", "evaluation", "analysis"):
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    module = "." * node.level + (node.module or "")
                    names = [module] + [f"{module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                if any(n.startswith(("prune_lab.demo", "..demo")) or n == "..demo" for n in names):
                    offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == []
    assert rc.BUILTIN_SCORERS == ("prune_lab.demo.scorer",)  # the one reference: a module path, imported on lookup


def test_demo_clip_is_found_by_name_in_a_fresh_process():
    code = (
        "import sys\n"
        "from prune_lab.runtime.clip import CLIP_SCORERS\n"
        "before = 'prune_lab.demo.scorer' in sys.modules\n"
        "print(before, CLIP_SCORERS.get('demo-clip').checkpoint.name, 'prune_lab.demo.scorer' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "demo-clip.safetensors", "True"]  # imported by the lookup, not before


# ------------------------------------------------------------------------------------------------- demo scorer
def test_demo_scorer_gives_the_scores_of_the_old_loaders(scenes, tmp_path):
    images, pils, captions = scenes
    scorer = rc.load_clip("demo-clip")  # shipped weights by default
    assert scorer.name.startswith("demo-clip ") and scorer.name.endswith("demo-clip.safetensors")
    np.testing.assert_allclose(scorer(pils, captions).numpy(), DEMO_SCORES, atol=1e-5)
    np.testing.assert_allclose(scorer(pils, captions[::-1]).numpy(), DEMO_SCORES_REVERSED, atol=1e-5)

    files = []
    for i, image in enumerate(pils):
        image.save(tmp_path / f"{i}.png")
        files.append(tmp_path / f"{i}.png")
    np.testing.assert_allclose(
        clip_scores(files, captions, scorer, size=32, batch_size=2), DEMO_FILE_SCORES, atol=1e-5
    )

    big = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False) * 255
    features = scorer.fid_extractor()(big)
    assert features.shape == (4, 64)
    assert float(features.double().sum()) == pytest.approx(DEMO_FID_FEATURE_SUM, rel=1e-5)


def test_demo_registration_writes_no_file_at_a_fixed_temp_path(tmp_path, monkeypatch):
    import shutil

    import open_clip

    from prune_lab.demo import scorer as demo

    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    monkeypatch.setattr(demo, "_private", [])
    tokenizer = shutil.copytree(demo.DEMO_DIR / demo.TOKENIZER_REF, tmp_path / "tokenizer")
    try:
        assert demo.register(tokenizer_dir=tokenizer) == "demo-clip"  # a new config: written, then registered
        assert open_clip.get_model_config("demo-clip")["text_cfg"]["hf_tokenizer_name"] == str(tokenizer)
        (folder,) = shared.iterdir()
        assert not (shared / f"prunelab-open-clip-{os.getuid()}").exists()
        assert folder.name.startswith("prunelab-open-clip-") and folder.name != "prunelab-open-clip-"
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and [p.name for p in folder.iterdir()] == [
            "demo-clip.json"
        ]
        shutil.rmtree(folder)
        demo.register()  # the shipped tokenizer again: a fresh private folder with another random name
        (again,) = shared.iterdir()
        assert again.name != folder.name
    finally:
        monkeypatch.undo()
        demo.register()
    assert open_clip.get_model_config("demo-clip")["text_cfg"]["hf_tokenizer_name"] == str(
        (demo.DEMO_DIR / demo.TOKENIZER_REF).resolve()
    )
