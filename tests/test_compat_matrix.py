"""Every row of `prunelab check` on expressible students of both topologies and on a `load_pruned` student (tiny
pipelines exported to disk): the rows that apply pass, the rest say why."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_pipeline, build_tiny_sdxl_pipeline
from test_compat import LONE, SUBSTITUTES, without

from prune_lab import apply_plan, create_plan, load_unet
from prune_lab.compat import CHECKS, open_export, run_checks
from prune_lab.compat.checks import table_order

EXPORTS = {"sd-bk-small": ("sd", "bk-small"), "sdxl-vega": ("sdxl", "vega"), "sd-lone": ("sd", "lone")}
#: Rows whose outcome depends on the machine or on a part of prune_lab that may be absent.
MACHINE = {"cpu-offload"}
COMPILE = "torch-compile"  # minutes of compilation on a CPU: its own test, marked slow


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("matrix")
    teachers = {"sd": build_tiny_pipeline, "sdxl": build_tiny_sdxl_pipeline}
    out = {}
    for name, (topology, preset) in EXPORTS.items():
        teacher = root / topology
        if not teacher.exists():
            teachers[topology]().save_pretrained(teacher)
        loaded = load_unet(teacher)
        plan = (
            without(loaded.unet, LONE, actions=SUBSTITUTES)
            if preset == "lone"
            else create_plan(loaded.unet, preset, source=str(teacher))
        )
        apply_plan(loaded, plan, root / name)
        rows = run_checks(open_export(root / name), root / f"{name}-tmp", [n for n in table_order() if n != COMPILE])
        out[name] = {r.check: r for r in rows.itertuples()}
    return out


@pytest.mark.parametrize("name", list(EXPORTS))
@pytest.mark.parametrize("check", [n for n in table_order() if n != COMPILE])
def test_row(tables, name, check):
    row = tables[name][check]
    if check == "cpu-offload":
        expected = "ok" if torch.cuda.is_available() else "not applicable"
        assert row.status == expected, row.result
    elif check in ("training-scripts", "single-file") and name == "sd-lone":  # needs a stock config: says why
        assert row.status == "not applicable" and "load_pruned" in row.reason
    else:
        assert row.status == "ok", row.result


def test_every_registered_check_is_a_row(tables):
    assert set(CHECKS.names()) - {COMPILE} == set(tables["sd-bk-small"])


def test_bare_unet_export_says_which_rows_need_a_pipeline(tiny_unet_dir, tmp_path):
    loaded = load_unet(tiny_unet_dir)
    apply_plan(loaded, create_plan(loaded.unet, "bk-small", source="tiny"), tmp_path / "bare")
    names = ["text-to-image", "img2img", "ip-adapter", "training-scripts", "controlnet", "lora"]
    rows = {r.check: r for r in run_checks(open_export(tmp_path / "bare"), tmp_path / "tmp", names).itertuples()}
    for name in names[:3]:
        assert rows[name].status == "not applicable" and "bare U-Net export" in rows[name].reason
    assert all(rows[n].status == "ok" for n in names[3:]), {n: rows[n].result for n in names[3:]}


@pytest.mark.slow
@pytest.mark.parametrize("topology", ["sd", "sdxl"])
def test_torch_compile_row_with_inductor(tmp_path, topology):
    """Inductor compiles the tiny student in minutes on a CPU (about 15 min measured on 2 busy cores)."""
    teacher = tmp_path / "teacher"
    (build_tiny_pipeline if topology == "sd" else build_tiny_sdxl_pipeline)().save_pretrained(teacher)
    loaded = load_unet(teacher)
    apply_plan(loaded, create_plan(loaded.unet, "bk-tiny" if topology == "sd" else "vega", source="t"), tmp_path / "e")
    rows = run_checks(open_export(tmp_path / "e"), tmp_path / "tmp", [COMPILE])
    assert rows.loc[0, "status"] in ("ok", "not applicable"), rows.loc[0, "result"]
