"""`prune_model_width`: a model in, its width-pruned copy written (what `prunelab width` runs)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..scoring.inputs import CalibrationSource, calibrate
from .criteria import TaylorSettings, get_width_criterion
from .persist import save_width
from .prune import Target, WidthResult, width_prune


@dataclass
class WidthRun:
    """What :func:`prune_model_width` did: the pruning result, where it went, the calibration it used."""

    result: WidthResult
    out: Path
    calibration: str | None = None


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"output folder {out} exists and is not empty; pass --overwrite or another --out")


def prune_model_width(
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    criterion: str = "magnitude",
    target: str | Target = "params=0.5",
    round_to: int | None = 8,
    calibration: CalibrationSource | None = None,
    taylor: TaylorSettings | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> WidthRun:
    """Load `model`, prune its channels to `target` (:func:`~prune_lab.width.prune.width_prune`) and save it to `out`
    in the format `prunelab apply` writes (a pipeline folder when `model` is one).

    Args:
        target: a :class:`Target` or its text (`params=0.5`, `params=50%`, `params=480M`).
        calibration: the Taylor criterion's data (:class:`~prune_lab.scoring.inputs.CalibrationSource`).
        Other arguments: as :func:`~prune_lab.width.prune.width_prune`.

    Raises:
        ValueError / FileNotFoundError / FileExistsError: bad settings (checked before the model is loaded where
            possible), missing calibration data, a non-empty `out` without `overwrite`.
    """
    from ..models import load_unet

    target = Target.parse(target) if isinstance(target, str) else target
    spec = get_width_criterion(criterion)
    out = Path(out)
    _check_out(out, overwrite)
    loaded = load_unet(model)
    calib, scheduler = None, None
    if spec.needs_gradients:
        source = calibration or CalibrationSource()
        calib, scheduler = calibrate(loaded, source, needed_by=f"--criterion {criterion}")
    result = width_prune(
        loaded.unet,
        criterion=criterion,
        target=target,
        round_to=round_to,
        calibration=calib,
        scheduler=scheduler,
        taylor=taylor,
        seed=seed,
        progress=progress,
    )
    provenance = {"model": str(model), **result.summary()}
    if calib is not None:
        provenance["calibration"] = calib.source
    save_width(result.unet, loaded, out, provenance=provenance, overwrite=overwrite)
    return WidthRun(result, out, calib.source if calib is not None else None)


def width_summary(run: WidthRun) -> pd.DataFrame:
    """One row: criterion, target, rounding, ratio, parameters before / after (`_M`, `params_pct`), output folder."""
    result = run.result
    row = {
        "criterion": result.criterion,
        "target": str(result.target),
        "round_to": result.round_to,
        "ratio": round(result.ratio, 4),
        "base_params_M": round(result.base_params / 1e6, 3),
        "params_M": round(result.params / 1e6, 3),
        "params_pct": round(100 * result.params_fraction, 2),
        "layers_resized": len(result.widths),
    }
    if result.gradients is not None:
        row["taylor_timesteps"] = len(result.gradients.timesteps)
    row["out"] = str(run.out)
    return pd.DataFrame([row])
