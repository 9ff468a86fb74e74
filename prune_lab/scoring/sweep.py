"""The per-unit loop: progress, persistence after every unit, `--resume`, and splitting units over processes.

Every finished unit is appended (flushed and fsync'ed) to a JSON-lines progress file per process,
`<out>.partial-<rank>.jsonl`, whose first line records the run's settings. A resumed run reads every progress file
written with the same settings, skips the units found there and scores the rest; the final table is built from
the records alone, so a resumed run writes exactly the table an uninterrupted one does. A killed run loses at most
the unit in flight (a torn last line is ignored).

With several processes (`accelerate launch`), accelerate's `PartialState.split_between_processes` gives each
process a share of the remaining units; the main process merges every progress file into one table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from tqdm.auto import tqdm

from ..backbones import backbone_of
from ..runtime.loading import denoiser
from .groups import ScoreUnit
from .registry import Criterion, ScoringInputs, check_applicable, check_finite, get_criterion
from .results import build_table, write_scores

PARTIAL_FORMAT = "prune_lab.scores.partial"


class ProgressLog:
    """Progress files of one run: `<prefix>.partial-<rank>.jsonl`, one JSON record per finished unit.

    Args:
        out: the score table path the run will write.
        settings: what makes two runs comparable (model, units, data, seed, criterion options).
        rank: this process's index.
    """

    def __init__(self, out: str | os.PathLike, settings: Mapping, rank: int = 0) -> None:
        self.out = Path(out)
        self.header = {"format": PARTIAL_FORMAT, "settings": json.loads(json.dumps(settings, default=str))}
        self.path = self._file(rank)

    def _file(self, rank: int) -> Path:
        return self.out.with_name(f"{self.out.name}.partial-{rank}.jsonl")

    def files(self) -> list[Path]:
        return sorted(self.out.parent.glob(f"{self.out.name}.partial-*.jsonl"))

    def load(self) -> dict[tuple[str, str], dict]:
        """Records of every progress file.

        Raises:
            ValueError: a progress file written with other settings.
        """
        records = {}
        for path in self.files():
            lines = path.read_text().splitlines()
            if not lines:
                continue
            if json.loads(lines[0]) != self.header:
                raise ValueError(f"{path} was written by a run with other settings; delete it or drop --resume")
            for line in lines[1:]:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # torn write of a killed run: that unit is redone
                    continue
                records[(rec["criterion"], rec["name"])] = rec
        return records

    def clear(self) -> None:
        for path in self.files():
            path.unlink()

    def _torn(self) -> bool:
        with self.path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"

    def append(self, record: dict) -> None:
        new = not self.path.exists() or self.path.stat().st_size == 0
        torn = not new and self._torn()
        with self.path.open("a") as f:
            if new:
                f.write(json.dumps(self.header) + "\n")
            if torn:  # a killed run's half-written last line: end it, so it stays one bad line
                f.write("\n")
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


def process_state() -> PartialState:
    """This process's accelerate state. Without CUDA (or with `ACCELERATE_USE_CPU`), processes started by
    `accelerate launch` / torchrun form a CPU (gloo) group; a plain run is one process."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def _check_inputs(criterion: Criterion, inputs: ScoringInputs) -> None:
    check_applicable([criterion.name], backbone_of(inputs.graph), inputs.unet)
    if "batches" in criterion.needs and not inputs.batches:
        raise ValueError(
            f"criterion {criterion.name!r} needs calibration data: pass --calib-dir, --prompts, "
            "--calib-cache or --synthetic"
        )
    if "pipeline" in criterion.needs and (inputs.pipeline is None or denoiser(inputs.pipeline) is not inputs.unet):
        raise ValueError(f"criterion {criterion.name!r} generates images: --model must be a pipeline folder")


def _score_share(
    criterion: Criterion, inputs: ScoringInputs, units: list[ScoreUnit], log: ProgressLog, progress: bool
) -> None:
    if not units:
        return
    scorer = criterion.build(inputs)
    for unit in tqdm(units, desc=criterion.name, unit="unit", disable=not progress):
        result = scorer(unit)
        raw = check_finite(criterion.name, unit.name, result.raw)
        importance = check_finite(criterion.name, unit.name, result.importance)
        log.append(
            {
                "criterion": criterion.name,
                "name": unit.name,
                "raw": raw,
                "importance": importance,
                "extras": dict(result.extras),
            }
        )


def run_sweep(
    inputs: ScoringInputs,
    units: list[ScoreUnit],
    criteria: list[str],
    out: str | os.PathLike,
    *,
    settings: Mapping | None = None,
    resume: bool = False,
    macs: Mapping[str, int] | None = None,
    progress: bool = True,
) -> pd.DataFrame | None:
    """Score `units` with every criterion, persisting each finished unit, and write the table to `out` (+ JSON).

    Args:
        inputs: model and data.
        units: what to score (:func:`~prune_lab.scoring.groups.score_units`).
        criteria: registered criterion names.
        out: the CSV to write (the JSON goes beside it); progress files live beside it until the table is written.
        settings: run settings recorded in the progress files (a resume must match them).
        resume: reuse the records of progress files written with the same settings.
        macs: per-unit MACs for the table.

    Returns:
        the merged table on the main process, None on the others.
    """
    found = [get_criterion(c) for c in criteria]
    for criterion in found:
        _check_inputs(criterion, inputs)
    state = process_state()
    log = ProgressLog(out, settings or {}, state.process_index)
    if state.is_main_process:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        if not resume:
            log.clear()
    state.wait_for_everyone()
    done = log.load() if resume else {}
    for criterion in found:
        todo = [u for u in units if (criterion.name, u.name) not in done]
        with state.split_between_processes(todo) as share:
            _score_share(criterion, inputs, list(share), log, progress)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    table = build_table(units, log.load(), [(c.name, c.metric) for c in found], macs)
    write_scores(table, out, {"criteria": list(criteria), "processes": state.num_processes, **log.header["settings"]})
    log.clear()
    return table
