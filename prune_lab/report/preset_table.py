"""The presets a model can take, with the size of each student (what `prunelab presets` shows)."""

from __future__ import annotations

import os

import pandas as pd

#: Columns of :func:`preset_table`, in order.
COLUMNS = ["preset", "params", "params_M", "params_pct", "expressible", "description"]


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def preset_table(model: str | os.PathLike) -> pd.DataFrame:
    """One row for the unpruned model, then one per preset of its family: parameters of the student each makes.

    Counted on `meta` tensors (structure only, no weights read).

    Args:
        model: built-in name, pipeline or U-Net folder, or hub id.

    Returns:
        columns :data:`COLUMNS`: `params` (count), `params_M`, `params_pct` (of the unpruned model), `expressible`
        (exports as a plain diffusers U-Net), `description`; the first row is `(base)`.
    """
    from ..backbones import build_student, create_plan, get_preset, list_presets, model_family
    from ..models import load_unet

    unet = load_unet(model, meta=True).unet
    base = _params(unet)
    rows = [dict(preset="(base)", params=base, expressible=True, description=str(model))]
    for name in list_presets(model_family(unet)):
        student = build_student(unet, create_plan(unet, name, source=str(model)))
        n = _params(student.student)
        rows.append(
            dict(preset=name, params=n, expressible=student.expressible, description=get_preset(name).description)
        )
    df = pd.DataFrame(rows)
    df["params_M"] = (df["params"] / 1e6).round(2)
    df["params_pct"] = (100 * df["params"] / base).round(1)
    return df[COLUMNS]
