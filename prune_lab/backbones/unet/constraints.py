"""The U-Net's validity rules as linear rows over removed atoms (:meth:`UNetBackbone.plan_constraints`).

An exact plan search (:mod:`prune_lab.search.exact`) otherwise learns what :func:`~.moves.buildable` rejects from
no-good cuts, one rejected set at a time. On a U-Net that is hopeless: a set that breaks the skip routing at one
level is rejected again with every combination of everything else. The rows here state the routing checks of
:func:`~.resolve.resolve` and :func:`~.moves.buildable` directly. Each is *implied* by a check (a set violating it is
always rejected), so the optimum is unchanged; the search still checks every set it returns with `buildable`, and
what is not stated here (GroupNorm divisibility of a dropped skip's consumer, transformer depths a config cannot
state) is still learned by cuts. Per slot (resnet `R`, attention `A`, up stages: skip `K`), `gone = x_R x_A`, and
per resolution level `empty` = every slot of its down and up stage gone:

* a kept skip needs its consumer's slot (`x_K >= gone`); an attention block keeps a transformer layer;
* only innermost levels go whole (`empty_0 = 0`, `empty_i <= empty_{i+1}`);
* every level makes as many skips as it takes (kept down slots + its sampler or `conv_in` = kept up slots);
* hidden channels: a kept resnet must receive what it was built for from the slot before it or the stage input;
* positional skips: the k-th kept consumer of a level pops the k-th kept producer from the top, and a consumer that
  keeps its resnet and skip must receive the channels it was built for;
* a down stage left empty feeds its sampler its input; the mid stage receives the last kept level's width;
* with `expressible`, what `derive_config` asks: whole slots, no dropped skips, a mid stage whole, gone, or its
  first resnet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..base import LinearRows
from .graph import UNetGraph
from .moves import stage_slots


@dataclass
class _Stage:
    """One down or up stage: its slots (resnet first), a variable per slot (1 when every member is removed) and
    `bare` (1 when every slot is)."""

    path: str
    slots: list[list[str]]
    gone: list[int]
    bare: int


@dataclass
class _Net:
    """A U-Net's program: `x` (atom -> removed), its stages by level, `empty` per level, the mid stage."""

    program: LinearRows
    x: Mapping[str, int]
    graph: UNetGraph
    down: list[_Stage]
    up: list[_Stage]
    empty: list[int]
    mid: list[str]
    mid_gone: int | None

    def stage(self, path: str) -> _Stage:
        slots = stage_slots(self.graph, path)
        gone = [self.program.both([(self.x[a], False) for a in slot]) for slot in slots]
        return _Stage(path, slots, gone, self.program.both([(g, False) for g in gone]))


def _net(program: LinearRows, x: Mapping[str, int], graph: UNetGraph) -> _Net:
    n = graph.num_levels
    net = _Net(program, x, graph, [], [], [], [], None)
    net.down = [net.stage(f"down_blocks.{i}") for i in range(n)]
    net.up = [net.stage(f"up_blocks.{n - 1 - i}") for i in range(n)]  # by level, like `down`
    net.empty = [program.both([(d.bare, False), (u.bare, False)]) for d, u in zip(net.down, net.up)]
    net.mid = [c for c in graph["mid_block"].children if c in x] if "mid_block" in graph else []
    net.mid_gone = program.both([(x[m], False) for m in net.mid]) if net.mid else None
    return net


def add_constraints(program: LinearRows, x: Mapping[str, int], graph: UNetGraph, expressible: bool = False) -> None:
    """Add the rows above over `x` (atom -> its removed variable); with `expressible`, also a plain config's."""
    net = _net(program, x, graph)
    if expressible:
        _expressible(net)
    _skips_and_layers(net)
    _levels(net)
    for i in range(graph.num_levels):
        _balance(net, i)
        _routing(net, i)
        _hidden(net, net.down[i], [(_down_input(graph, i), None)])
        _hidden(net, net.up[i], _up_inputs(net, i))
    _samplers(net)
    _mid(net)


def _skips_and_layers(net: _Net) -> None:
    """`x_K >= gone` for every up slot; an attention block kept keeps one of its transformer layers."""
    for stage in net.up:
        for slot, gone in zip(stage.slots, stage.gone):
            net.program.row({net.x[f"skip:{slot[0]}"]: 1.0, gone: -1.0}, lower=0.0)
    for unit in net.graph.of_kind("attention"):
        if unit.children:
            layers = net.program.both([(net.x[c], False) for c in unit.children])
            net.program.row({net.x[unit.name]: 1.0, layers: -1.0}, lower=0.0)


def _levels(net: _Net) -> None:
    """The outermost level never goes whole; a level goes whole only with every level inside it."""
    net.program.row({net.empty[0]: 1.0}, upper=0.0)
    for outer, inner in zip(net.empty, net.empty[1:]):
        net.program.row({outer: 1.0, inner: -1.0}, upper=0.0)


def _is_fixed(producer: str) -> bool:
    """`conv_in` and the samplers make skips whenever their level is kept (not slots that can go)."""
    return producer == "conv_in" or ".downsamplers." in producer


def _balance(net: _Net, level: int) -> None:
    """Kept down slots + fixed producers (unless the level is gone) = kept up slots."""
    down, up = net.down[level], net.up[level]
    fixed = len([name for name, lv, _ in net.graph.producers if lv == level and _is_fixed(name)])
    coefs = {g: -1.0 for g in down.gone}
    for g in up.gone:
        coefs[g] = coefs.get(g, 0.0) + 1.0
    if fixed:
        coefs[net.empty[level]] = -float(fixed)
    constant = len(up.gone) - len(down.gone) - fixed
    net.program.row(coefs, lower=constant, upper=constant)


def _routing(net: _Net, level: int) -> None:
    """Positional skips where the level's fixed producer (bottom of its stack) and its slots differ in channels.

    The kept up slot j pops a slot's skip while fewer than the kept down slots were kept before it (`r_j <
    alive`), the fixed producer's after; where it keeps resnet and skip (`check`) the channels must be its own.
    """
    down, up, graph = net.down[level], net.up[level], net.graph
    made = [(name, ch) for name, lv, ch in graph.producers if lv == level]
    if len(made) != 1 + len(down.slots) or not _is_fixed(made[0][0]) or len({ch for _, ch in made[1:]}) != 1:
        return
    bottom, top = made[0][1], made[1][1]
    if bottom == top:
        return
    dn, big = len(down.gone), len(down.gone) + len(up.gone)
    for j, slot in enumerate(up.slots):
        skip = f"skip:{slot[0]}"
        check = net.program.both([(net.x[slot[0]], True), (net.x[skip], True)])
        wanted = graph[skip].out_channels
        if wanted not in (top, bottom):
            net.program.row({check: 1.0}, upper=0.0)
            continue
        sign = -1.0 if wanted == top else 1.0  # top: r_j <= alive - 1; bottom: r_j >= alive
        coefs = {g: sign for g in up.gone[:j]}
        for g in down.gone:
            coefs[g] = coefs.get(g, 0.0) - sign
        coefs[check] = float(big)
        net.program.row(coefs, upper=big - 1 - j + dn if wanted == top else big - dn + j)


def _stage_out(graph, stage: _Stage) -> int | None:
    """The channels every resnet of `stage` outputs, or None when they differ."""
    outs = {graph[slot[0]].out_channels for slot in stage.slots}
    return outs.pop() if len(outs) == 1 else None


def _down_input(graph, i: int) -> int | None:
    """What down stage `i` receives: `conv_in`'s output, or the sampler before it (which keeps its channels)."""
    name = "conv_in" if i == 0 else f"down_blocks.{i - 1}.downsamplers.0"
    return next((ch for p, _, ch in graph.producers if p == name), None)


def _mid_width(net: _Net) -> int | None:
    widths = {net.graph[m].in_channels for m in net.mid} | {net.graph[m].out_channels for m in net.mid}
    return widths.pop() if len(widths) == 1 else None


def _passed_on(net: _Net, level: int, beyond: list[tuple[int, bool]], mid: bool = True) -> list[tuple]:
    """What down stage `level` passes on when it is the last level kept (`beyond`: literals saying so): its output
    if it keeps a slot, else its input; with `mid`, what then leaves the mid stage (its width if it keeps a member).
    Each as (width, a variable 1 in that case)."""
    down, program = net.down[level], net.program
    through = [(net.mid_gone, False)] if mid and net.mid else []
    cases = [(_stage_out(net.graph, down), (down.bare, True)), (_down_input(net.graph, level), (down.bare, False))]
    out = [(width, program.both(beyond + through + [when])) for width, when in cases]
    if through:
        out.append((_mid_width(net), program.both(beyond + [(net.mid_gone, True)])))
    return out


def _up_inputs(net: _Net, level: int) -> list[tuple[int | None, int | None]]:
    """What the up stage of `level` receives: the up stage of the level inside it, or what is passed on."""
    n = net.graph.num_levels
    if level == n - 1:
        return _passed_on(net, level, [])
    inner = net.up[level + 1]
    cases = _passed_on(net, level, [(net.empty[level + 1], False)])
    return cases + [(_stage_out(net.graph, inner), net.program.both([(net.empty[level + 1], True)]))]


def _hidden(net: _Net, stage: _Stage, inputs: list[tuple[int | None, int | None]]) -> None:
    """A kept resnet receives the hidden channels it was built for: the stage's output after a kept slot, else
    the stage's input, one of `inputs` (width, variable 1 in that case; None: always)."""
    out = _stage_out(net.graph, stage)
    if out is None:
        return
    for j, slot in enumerate(stage.slots):
        resnet, skip = slot[0], f"skip:{slot[0]}"
        need = net.graph[resnet].in_channels - (net.graph[skip].out_channels if skip in net.graph else 0)
        if need != out:  # no slot before it may stay
            for g in stage.gone[:j]:
                net.program.row({net.x[resnet]: 1.0, g: 1.0}, lower=1.0)
        for width, case in inputs:
            if width is not None and need != width:  # in that case, some slot before it must stay
                coefs = {net.x[resnet]: -1.0, **{g: 1.0 for g in stage.gone[:j]}}
                if case is not None:
                    coefs[case] = 1.0
                net.program.row(coefs, upper=float(j) if case is not None else j - 1.0)


def _samplers(net: _Net) -> None:
    """A down stage left without slots passes its input to its sampler: only if the channels agree, or the next
    level is gone (`buildable`'s check)."""
    for i, stage in enumerate(net.down[:-1]):
        unit = net.graph[stage.path]
        if unit.in_channels != unit.out_channels:
            net.program.row({stage.bare: 1.0, net.empty[i + 1]: -1.0}, upper=0.0)


def _mid(net: _Net) -> None:
    """The mid stage must go where what reaches it is not the width it was built for."""
    width = _mid_width(net)
    if width is None:
        return
    n = net.graph.num_levels
    for level in range(n):
        beyond = [(net.empty[level + 1], False)] if level < n - 1 else []
        if level > 0:
            beyond.append((net.empty[level], True))
        for passed, case in _passed_on(net, level, beyond, mid=False):
            if passed is not None and passed != width:
                for m in net.mid:  # x_m >= case
                    net.program.row({net.x[m]: 1.0, case: -1.0}, lower=0.0)


def _expressible(net: _Net) -> None:
    """A plain diffusers config (`derive_config`): slots stay whole or go whole, no skip is dropped, and the mid
    stage keeps all of its members, none, or (conditional U-Nets) only its first resnet."""
    x, program = net.x, net.program
    for stage in net.down + net.up:
        for slot, gone in zip(stage.slots, stage.gone):
            for atom in slot + ([f"skip:{slot[0]}"] if stage in net.up else []):
                program.row({x[atom]: 1.0, gone: -1.0}, lower=0.0, upper=0.0)
    if len(net.mid) > 1:
        first, second = net.mid[0], net.mid[1]
        program.row({x[first]: 1.0, x[second]: -1.0}, upper=0.0)
        for other in net.mid[2:]:
            program.row({x[other]: 1.0, x[second]: -1.0}, lower=0.0, upper=0.0)
