"""The demo world and its trained models: a miniature text-to-image setting that runs every prune_lab step offline.

* :mod:`~prune_lab.demo.world`: procedurally drawn, captioned scenes with ground-truth attributes;
* :mod:`~prune_lab.demo.architecture`: the SD-layout parts at toy size and the word-level tokenizer;
* :mod:`~prune_lab.demo.scorer`: the open_clip scorer ``demo-clip`` (registered with open_clip and with
  :func:`prune_lab.runtime.clip.register_clip`; loading);
* :mod:`~prune_lab.demo.train`: the training recipe; :mod:`~prune_lab.demo.quality`: the quality figures.

The trained weights ship in the package: :data:`PIPELINE_DIR` (a ``StableDiffusionPipeline`` folder, the built-in
model ``demo``), :data:`DIT_DIR` (a ``StableDiffusion3Pipeline`` folder, ``demo-dit``: :mod:`~prune_lab.demo.dit`)
and :data:`CLIP_DIR`. This module imports nothing heavy.
"""

from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
PIPELINE_DIR = DEMO_DIR / "pipeline"
DIT_DIR = DEMO_DIR / "pipeline-dit"
CLIP_DIR = DEMO_DIR / "clip"

#: How the demo pipeline samples everywhere prune_lab generates with it (quality figures, CLIP scores, FID):
#: DPM-Solver++ (``prunelab generate``'s ``dpm``), 20 steps, classifier-free guidance 7.5 (SD's default).
SAMPLING = {"scheduler": "dpm", "steps": 20, "guidance": 7.5}

#: How the `demo-dit` pipeline samples: its own flow-matching Euler sampler (``flow-euler``), 20 steps, guidance 7
#: (SD3's default).
DIT_SAMPLING = {"scheduler": "flow-euler", "steps": 20, "guidance": 7.0}


def sampling(model: str) -> dict:
    """How `model` samples in the demo's measurements: :data:`DIT_SAMPLING` for ``demo-dit`` or a pipeline folder
    with a flow-matching scheduler, else :data:`SAMPLING`."""
    import json

    config = (DIT_DIR if model == "demo-dit" else Path(model)) / "scheduler" / "scheduler_config.json"
    flow = config.is_file() and json.loads(config.read_text()).get("_class_name") == "FlowMatchEulerDiscreteScheduler"
    return dict(DIT_SAMPLING if model == "demo-dit" or flow else SAMPLING)


#: Settings that make ``prunelab distill`` fit the demo world: its image side, and no left-right flips (kept off
#: for a world whose captions could name sides; harmless for centred shapes).
DISTILL = {"resolution": 32, "flip": False}


def distill_student(
    student,
    data,
    out,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    teacher=PIPELINE_DIR,
    checkpoint_every: int = 100,
    progress: bool = True,
    **loss_weights,
):
    """Retrain a `prunelab apply` student from the demo teacher with the shared recipe at the world's settings
    (:data:`DISTILL`, one micro-batch per step, constant lr, the newest checkpoint kept, resuming a killed run);
    `loss_weights` are `DistillConfig`'s ``lambda_*``. Returns the recipe's `TrainResult`."""
    from ..distill.recipe import DistillConfig, DistillRecipe

    cfg = DistillConfig(
        teacher=str(teacher),
        student=str(student),
        data=str(data),
        out=str(out),
        max_steps=steps,
        batch_size=batch_size,
        grad_accum=1,
        lr=lr,
        seed=seed,
        checkpoint_every=checkpoint_every,
        checkpoints_limit=1,
        resume="latest",
        num_workers=0,
        progress=progress,
        **DISTILL,
        **loss_weights,
    )
    return DistillRecipe(cfg).run()
