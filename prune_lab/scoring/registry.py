"""The criterion registry and the one contract every criterion follows.

A criterion is registered with :func:`register_criterion` and reached only through :func:`get_criterion` /
:func:`list_criteria` (the CLI's `--criterion` help and the test parametrisation both come from here). Listing is
import-cheap: the built-in criteria are known by name (:data:`BUILTIN_CRITERIA`) and their modules, which import
torch, are imported on first lookup.

The contract, in two calls, so that the sweep can persist and resume unit by unit:

1. ``scorer = criterion.build(inputs)`` does the work every unit shares (backward passes, cached activations, the
   unpruned baseline) from the model and data in :class:`ScoringInputs`;
2. ``scorer(unit) -> UnitScore`` scores one :class:`~prune_lab.scoring.groups.ScoreUnit`: a finite `raw` metric
   and an `importance` (higher = more important) derived from it.

Both leave the model unchanged (weights, buffers, `requires_grad`, `.grad`) and are deterministic under the
seed in :class:`ScoringInputs`. A criterion's settings are a typed :class:`~prune_lab.scoring.options.CriterionOptions`
subclass registered with it.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .options import CriterionOptions

if TYPE_CHECKING:
    import torch.nn as nn

    from ..units import Graph
    from .groups import ScoreUnit

#: What a criterion may need beyond the model: denoising batches, or a pipeline plus prompts.
NEEDS = ("batches", "pipeline")
#: Built-in criteria -> the module whose import registers it (imported on first lookup of any of them).
BUILTIN_CRITERIA: dict[str, str] = {
    "ablation": ".ablation",
    "clip": ".clip",
    "magnitude": ".magnitude",
    "similarity": ".similarity",
    "taylor": ".taylor",
}

OptionsT = TypeVar("OptionsT", bound=CriterionOptions)


@dataclass
class ScoringInputs:
    """Model and data in.

    Attributes:
        unet: the U-Net (left unchanged by every criterion).
        graph: its walk.
        batches: denoising inputs for data-driven criteria (see :mod:`prune_lab.scoring.calibration`).
        pipeline: a diffusers pipeline whose `.unet` is `unet` (generation-based criteria).
        prompts: prompts for generation-based criteria.
        options: typed criterion settings, at most one instance per class (:func:`criterion_options` builds them
            from flat settings); a criterion without an instance of its class uses the defaults.
        seed: the seed every random draw derives from.
        calibration: where `batches` came from (recorded with the scores), when known.
    """

    unet: nn.Module
    graph: Graph
    batches: list | None = None
    pipeline: Any | None = None
    prompts: list[str] | None = None
    options: Sequence[CriterionOptions] = ()
    seed: int = 0
    calibration: str | None = None

    def __post_init__(self) -> None:
        self.options = tuple(self.options)
        for i, option in enumerate(self.options):
            if not isinstance(option, CriterionOptions):
                raise TypeError(
                    f"ScoringInputs.options takes CriterionOptions instances, got {option!r}; build them from "
                    "settings with prune_lab.scoring.criterion_options"
                )
            if any(type(other) is type(option) for other in self.options[:i]):
                raise ValueError(f"ScoringInputs.options holds two {type(option).__name__}; pass one")

    def options_for(self, kind: type[OptionsT]) -> OptionsT:
        """The given options of class `kind`, else its defaults."""
        given = next((o for o in self.options if type(o) is kind), None)
        return kind() if given is None else given

    def with_options(self, **changes: Any) -> ScoringInputs:
        """A copy whose options of every registered criterion that declares a changed field take the new value.

        Raises:
            ValueError: a field no registered criterion declares.
        """
        kinds = dict.fromkeys([*(type(o) for o in self.options), *_option_classes()])
        _check_fields(changes, kinds)
        options = []
        for kind in kinds:
            mine = {k: v for k, v in changes.items() if k in _fields(kind)}
            given = next((o for o in self.options if type(o) is kind), None)
            if mine or given is not None:
                options.append(dataclasses.replace(given or kind(), **mine))
        return dataclasses.replace(self, options=tuple(options))


@dataclass(frozen=True)
class UnitScore:
    """One unit's result: the raw metric, its importance (higher = more important) and extra metrics."""

    raw: float
    importance: float
    extras: dict[str, float] = field(default_factory=dict)


UnitScorer = Callable[["ScoreUnit"], UnitScore]


@dataclass(frozen=True)
class Criterion:
    """A registered criterion.

    Attributes:
        name: registry key (`--criterion NAME`).
        metric: name of the raw metric it reports (`mean_abs_weight`, `output_mse`, ...).
        needs: inputs it requires beyond the model (subset of :data:`NEEDS`).
        build: `build(inputs) -> scorer`, see the module docstring.
        description: one line, with the source it follows.
        options: the class of its settings (:class:`~prune_lab.scoring.options.CriterionOptions`: none).
        requires: backbone capabilities it relies on (:attr:`prune_lab.backbones.Backbone.capabilities`, e.g.
            `block_streams`, `generation`); it applies to the backbones that have all of them.
    """

    name: str
    metric: str
    needs: tuple[str, ...]
    build: Callable[[ScoringInputs], UnitScorer]
    description: str
    options: type[CriterionOptions] = CriterionOptions
    requires: tuple[str, ...] = ()

    def applies_to(self, backbone, model=None) -> bool:
        """Whether it can score units of `backbone` (a :class:`~prune_lab.backbones.Backbone`), or of its `model`
        when given (:meth:`~prune_lab.backbones.Backbone.capabilities_of`: a DiT cannot generate from text)."""
        return not self.lacking(backbone, model)

    def lacking(self, backbone, model=None) -> list[str]:
        """The capabilities it requires that `backbone` (or its `model`, when given) lacks, sorted."""
        have = backbone.capabilities if model is None else backbone.capabilities_of(model)
        return sorted(set(self.requires) - set(have))


_CRITERIA: dict[str, Criterion] = {}


def register_criterion(
    name: str,
    *,
    metric: str,
    needs: Iterable[str] = (),
    description: str = "",
    options: type[CriterionOptions] = CriterionOptions,
    requires: Iterable[str] = (),
):
    """Decorator registering `build(inputs) -> scorer` as criterion `name`, with its options class and the backbone
    capabilities it `requires`."""
    needs = tuple(needs)
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"criterion {name!r} needs unknown inputs {sorted(unknown)}; choose from {NEEDS}")
    if not (isinstance(options, type) and issubclass(options, CriterionOptions)):
        raise TypeError(f"criterion {name!r}: options must be a CriterionOptions subclass, got {options!r}")

    def wrap(build: Callable[[ScoringInputs], UnitScorer]):
        summary = description or (build.__doc__ or "").split("\n")[0]
        _CRITERIA[name] = Criterion(name, metric, needs, build, summary, options, tuple(requires))
        return build

    return wrap


def _load(names: Iterable[str]) -> None:
    for name in names:
        if name in BUILTIN_CRITERIA and name not in _CRITERIA:
            importlib.import_module(BUILTIN_CRITERIA[name], __package__)


def list_criteria(backbone=None, model=None) -> list[str]:
    """Registered criterion names, sorted; with a `backbone` (a :class:`~prune_lab.backbones.Backbone` or its
    registry name), only those that apply to every model of it, or to `model` when given. Import-cheap without
    one: built-in modules are not imported."""
    names = sorted({*BUILTIN_CRITERIA, *_CRITERIA})
    if backbone is None:
        return names
    if isinstance(backbone, str):
        from ..backbones import get_backbone

        backbone = get_backbone(backbone)
    return [name for name in names if get_criterion(name).applies_to(backbone, model)]


def check_applicable(names: Iterable[str], backbone, model=None) -> None:
    """Raise a ValueError naming the first of `names` that does not apply to `backbone` (to `model`, when given),
    and those that do."""
    what = f"{backbone.name} models" + ("" if model is None else f" of class {type(model).__name__}")
    for name in names:
        lacking = get_criterion(name).lacking(backbone, model)
        if lacking:
            raise ValueError(
                f"--criterion {name} does not apply to {what} (it needs {', '.join(lacking)}); "
                f"choose from: {', '.join(list_criteria(backbone, model))}"
            )


def get_criterion(name: str) -> Criterion:
    """The criterion registered as `name` (a built-in one's module is imported here).

    Raises:
        ValueError: unknown name (with the closest registered name and the full list).
    """
    _load([name])
    if name not in _CRITERIA:
        import difflib

        close = difflib.get_close_matches(name, list_criteria(), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown criterion {name!r}; {hint}choose from: {', '.join(list_criteria())}")
    return _CRITERIA[name]


# ------------------------------------------------------------------------------------------------------ options


def _fields(kind: type) -> set[str]:
    return {f.name for f in dataclasses.fields(kind)}


def _option_classes() -> list[type[CriterionOptions]]:
    """The options class of every registered criterion (built-ins imported), without repeats."""
    _load(BUILTIN_CRITERIA)
    return list(dict.fromkeys(_CRITERIA[name].options for name in list_criteria()))


def _check_fields(values: Mapping[str, Any], kinds: Iterable[type]) -> None:
    known = set().union(*(_fields(k) for k in kinds))
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"unknown criterion option(s) {', '.join(unknown)}; the criteria take: {', '.join(sorted(known))}"
        )


def criterion_options(
    values: Mapping[str, Any], criteria: Iterable[str] | None = None
) -> tuple[CriterionOptions, ...]:
    """Typed options from flat settings: each criterion's options class takes the fields it declares.

    Args:
        values: field -> value (`skip_mode`, `prefix_cache`, `clip_model` ...); a field several classes declare
            (`skip_mode`) goes to each of them.
        criteria: whose options to build (default: every registered criterion).

    Raises:
        ValueError: a field no registered criterion declares, or an unknown criterion.
    """
    kinds = _option_classes()
    _check_fields(values, kinds)
    names = list_criteria() if criteria is None else list(criteria)
    wanted = dict.fromkeys(get_criterion(name).options for name in names)
    return tuple(kind(**{k: v for k, v in values.items() if k in _fields(kind)}) for kind in wanted if _fields(kind))


def check_finite(criterion: str, unit: str, value: float) -> float:
    """`value`, or a ValueError naming the unit when it is NaN / infinite."""
    if not math.isfinite(value):
        raise ValueError(
            f"criterion {criterion!r} gave a non-finite score ({value}) for {unit}; "
            "check the model weights and calibration data (or use --dtype float32)"
        )
    return value
