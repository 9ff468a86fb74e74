"""Budgets: `params=0.5` (a fraction of the unpruned model), `params=480M`, `macs=200G`, `latency=120ms`.

A budget is an upper bound on one resource of the pruned U-Net (one denoising step, batch 1, thop convention,
as :mod:`prune_lab.report` counts it). Resources are registered in :data:`RESOURCES` (a
:class:`~prune_lab.runtime.registry.Registry`); the CLI's `--target` help and the error messages come from there.
`plan --target` and `width --target` both read budgets with :func:`parse_budget`. Import-cheap: no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .registry import Registry


@dataclass(frozen=True)
class Resource:
    """A budgetable cost of the U-Net.

    Attributes:
        name: key in `--target NAME=VALUE` and in cost dicts.
        units: suffixes accepted for absolute values, with their multiplier.
        scale / suffix: how to display it (`params` in millions: 1e6, "M").
        description: one line for help texts.
        measured: it needs timings on real weights (latency), not a `meta` forward.
    """

    name: str
    units: dict[str, float]
    scale: float
    suffix: str
    description: str
    measured: bool = False

    def format(self, value: float) -> str:
        return f"{value / self.scale:,.2f}{self.suffix}"


_COUNTS = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
#: The budgetable resources, by name (`--target NAME=VALUE`).
RESOURCES: Registry[Resource] = Registry("resource")
for _resource in (
    Resource("params", _COUNTS, 1e6, "M", "U-Net parameters"),
    Resource("macs", _COUNTS, 1e9, "G", "MACs of one U-Net step (thop convention, BK-SDM Table 2)"),
    Resource("macs_with_attention", _COUNTS, 1e9, "G", "MACs including the attention-score matmuls thop leaves out"),
    Resource("latency", {"ms": 1.0, "s": 1e3}, 1.0, "ms", "measured time of one U-Net step", measured=True),
):
    RESOURCES.register(_resource.name, _resource)
del _resource

_VALUE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(%|[A-Za-z]*)\s*$")


def get_resource(name: str) -> Resource:
    """The resource registered as `name`.

    Raises:
        ValueError: unknown name (with the closest one and the full list).
    """
    return RESOURCES.get(name)


@dataclass(frozen=True)
class Budget:
    """An upper bound on one resource.

    Attributes:
        resource: a name in :data:`RESOURCES`.
        value: a fraction of the unpruned model (0 < value <= 1) or an absolute amount (raw units: parameters,
            MACs, milliseconds).
        fraction: which of the two `value` is.
        text: what the user wrote.
    """

    resource: str
    value: float
    fraction: bool
    text: str

    def limit(self, base: float) -> float:
        """The absolute bound, given the unpruned model's `base` amount."""
        return self.value * base if self.fraction else self.value


_EXAMPLE = "e.g. params=0.5, macs=70%, params=480M, latency=120ms"


def split_budget(text: str) -> tuple[str, float, str]:
    """`RESOURCE=VALUE` split into the resource name, a positive number and its unit (form only: the resource and
    the unit are not checked). A percentage comes back as a fraction, with unit `""`.

    Raises:
        ValueError: not `NAME=VALUE`, not a number with an optional unit, or not positive.
    """
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ValueError(f"--target {text!r} is not RESOURCE=VALUE; {_EXAMPLE}")
    if raw.strip().startswith("-"):
        raise ValueError(f"--target {text}: a budget must be positive; {_EXAMPLE}")
    match = _VALUE.match(raw)
    if not match:
        raise ValueError(f"--target {text}: {raw.strip()!r} is not a number with an optional unit; {_EXAMPLE}")
    number, unit = float(match.group(1)), match.group(2)
    if number <= 0:
        raise ValueError(f"--target {text}: a budget must be positive; {_EXAMPLE}")
    return (name, number / 100, "") if unit == "%" else (name, number, unit)


def parse_budget(text: str) -> Budget:
    """`RESOURCE=VALUE`: VALUE a fraction (`0.5`, `50%`) or an amount with a unit (`480M`, `200G`, `120ms`).

    Raises:
        ValueError: not `NAME=VALUE`, an unknown resource or unit, a value that is not positive, a fraction
            above 1.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_budget: the budget (--target) must be a string like {_EXAMPLE[5:]}, got {text!r:.60}")
    name, number, unit = split_budget(text)
    resource = get_resource(name)
    if unit == "":
        if number > 1:
            raw = text.partition("=")[2].strip()
            raise ValueError(
                f"--target {text}: a fraction of the unpruned model must be at most 1; for an absolute budget "
                f"add a unit, e.g. {name}={raw}{resource.suffix}"
            )
        return Budget(name, number, True, text)
    scale = {u.upper(): s for u, s in resource.units.items()}.get(unit.upper())
    if scale is None:
        units = ", ".join(u for u in resource.units if u)
        raise ValueError(f"--target {text}: unknown unit {unit!r} for {name}; use one of {units}")
    return Budget(name, number * scale, False, text)
