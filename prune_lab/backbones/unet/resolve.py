"""What a plan means for a U-Net: which slots survive, how skips are rewired, whether channels agree.

:func:`resolve` checks a plan against a U-Net's graph and turns it into a :class:`Resolution`: per stage, which
resnet/attention slots survive, which skip every kept consumer receives (diffusers routes skips positionally,
so removing the second R-A pair of a down stage shifts the up stage's pairing: that is how BK-SDM's students are
wired), and whether channel counts still agree everywhere. Any disagreement is a `ValueError` that names the unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...plan import Plan, expand_keep
from ...units import unknown_unit_message
from .graph import SKIP_PREFIX, UNetGraph


@dataclass
class Slot:
    """One resnet (+ attention) position of a stage, with its fate under a plan.

    In the mid stage every member (resnet or attention block) is a slot of its own, named in `resnet`.
    """

    resnet: str
    attention: str | None
    resnet_kept: bool
    attention_kept: bool
    layers: list[str] = field(default_factory=list)  # kept transformer layers of the attention
    skip: str | None = None  # up stages: the skip unit feeding the resnet
    skip_mode: str = "keep"  # keep | zero | drop
    producer: str | None = None  # up stages: the producer it receives under the plan (positional routing)

    @property
    def gone(self) -> bool:
        return not self.resnet_kept and not self.attention_kept


@dataclass
class StagePlan:
    path: str
    slots: list[Slot]
    level_removed: bool = False

    @property
    def kept_slots(self) -> list[Slot]:
        return [s for s in self.slots if not s.gone]


@dataclass
class Resolution:
    """A plan checked against a graph: the structure of the compact network it describes."""

    graph: UNetGraph
    kept: set[str]
    actions: dict[str, str]
    down: list[StagePlan]
    mid: StagePlan | None
    up: list[StagePlan]
    removed_levels: int = 0

    @property
    def removed(self) -> list[str]:
        """Removed atoms (resnets, attention blocks, transformer layers, skips), in forward order."""
        return [u.name for u in self.graph.atoms() if u.name not in self.kept]

    def rewired(self) -> dict[str, tuple[str, str]]:
        """Kept consumers whose skip now comes from another producer: consumer -> (teacher's, plan's)."""
        out = {}
        for stage in self.up:
            for slot in stage.kept_slots:
                if slot.skip_mode != "drop" and slot.producer:
                    original = self.graph.edge_of(slot.resnet).producer
                    if original != slot.producer:
                        out[slot.resnet] = (original, slot.producer)
        return out


def _slot(graph: UNetGraph, kept: set[str], stage: str, j: int, attn_exists: bool) -> Slot:
    resnet = f"{stage}.resnets.{j}"
    attention = f"{stage}.attentions.{j}" if attn_exists else None
    layers = [n for n in graph[attention].children if n in kept] if attention else []
    return Slot(resnet, attention, resnet in kept, attention in kept if attention else False, layers)


def _stage_slots(graph: UNetGraph, kept: set[str], stage: str) -> list[Slot]:
    resnets = [n for n in graph[stage].children if graph[n].kind == "resnet"]
    attns = {n for n in graph[stage].children if graph[n].kind == "attention"}
    return [_slot(graph, kept, stage, j, f"{stage}.attentions.{j}" in attns) for j in range(len(resnets))]


def resolve(plan: Plan, graph: UNetGraph, model_fingerprint: str | None = None) -> Resolution:
    """Validate `plan` against `graph` and describe the compact network (see the module docstring).

    Raises:
        ValueError: another architecture, unknown names, bad actions, unfed or mis-shaped consumers.
    """
    if model_fingerprint and plan.base.get("fingerprint") not in (None, model_fingerprint):
        raise ValueError(
            f"plan was made for architecture {plan.base.get('fingerprint')} ({plan.base.get('source', '?')}), "
            f"this model is {model_fingerprint}; write a plan for it with `prunelab plan --model ...`"
        )
    kept = expand_keep(graph, plan.keep)
    for name in plan.actions:
        if name not in graph:
            raise ValueError(unknown_unit_message(name, graph.names))
    n = graph.num_levels
    down = [StagePlan(f"down_blocks.{i}", _stage_slots(graph, kept, f"down_blocks.{i}")) for i in range(n)]
    up = [StagePlan(f"up_blocks.{u}", _stage_slots(graph, kept, f"up_blocks.{u}")) for u in range(n)]
    mid = _mid_plan(graph, kept) if "mid_block" in graph else None
    res = Resolution(graph, kept, dict(plan.actions), down, mid, up)
    _resolve_skips(res)
    _mark_removed_levels(res)
    _check_actions(res)
    _check_flow(res)
    return res


def _mid_plan(graph: UNetGraph, kept: set[str]) -> StagePlan:
    members = graph["mid_block"].children
    slots = []
    for name in members:
        unit = graph[name]
        if unit.kind == "resnet":
            slots.append(Slot(name, None, name in kept, False))
        else:
            layers = [c for c in unit.children if c in kept]
            slots.append(Slot(name, None, name in kept, False, layers))
    return StagePlan("mid_block", slots)


def _resolve_skips(res: Resolution) -> None:
    for stage in res.up:
        for slot in stage.slots:
            slot.skip = SKIP_PREFIX + slot.resnet
            if slot.skip in res.kept:
                if slot.gone:
                    raise ValueError(
                        f"{slot.skip} is kept but its consumer {slot.resnet} (and its attention) is "
                        "removed; remove the skip too or keep the consumer"
                    )
                continue
            slot.skip_mode = "gone" if slot.gone else res.actions.get(slot.skip, "drop")
            if slot.skip_mode not in ("zero", "drop", "gone"):
                raise ValueError(f"action {slot.skip_mode!r} does not apply to {slot.skip}; use zero or drop")


def _mark_removed_levels(res: Resolution) -> None:
    """A level is removed when its down stage and its mirrored up stage lose every slot (innermost only)."""
    n = res.graph.num_levels
    empty = [not res.down[i].kept_slots and not res.up[n - 1 - i].kept_slots for i in range(n)]
    count = 0
    while count < n - 1 and empty[n - 1 - count]:
        count += 1
    for i in range(n - count):
        if empty[i]:
            raise ValueError(
                f"down_blocks.{i} and up_blocks.{n - 1 - i} lose every block, but only the innermost resolution "
                "levels can be removed whole; keep at least one block of one of them"
            )
    for i in range(n - count, n):
        res.down[i].level_removed = res.up[n - 1 - i].level_removed = True
    res.removed_levels = count


def _check_actions(res: Resolution) -> None:
    graph = res.graph
    partial = {
        s.resnet
        for st in res.down + res.up + ([res.mid] if res.mid else [])
        for s in st.slots
        if not s.resnet_kept and not s.gone
    }
    if res.mid is not None:  # mid resnets are slots of their own; they are partial when anything else survives
        partial |= {s.resnet for s in res.mid.slots if not s.resnet_kept and any(t.resnet_kept for t in res.mid.slots)}
    for name, action in res.actions.items():
        if action == "interpolate" and name in res.kept:
            raise ValueError(f"action 'interpolate' is for removed units, but {name} is kept")
        if action in ("zero", "drop") and graph[name].kind != "skip":
            raise ValueError(f"action {action!r} is for skips, but {name} is a {graph[name].kind}")
    for name in sorted(partial, key=lambda n: graph[n].order):
        unit = graph[name]
        if unit.removal == "interpolate" and res.actions.get(name) != "interpolate":
            raise ValueError(
                f"removing {name} changes channels ({unit.in_channels} -> {unit.out_channels}) while its slot "
                f'stays; add "{name}": "interpolate" to the plan\'s actions or remove the whole slot'
            )


class _Flow:
    """Channel bookkeeping through the compact network (down, mid, up), with positional skip routing."""

    def __init__(self, res: Resolution) -> None:
        self.res, self.graph = res, res.graph
        self.stack: list[tuple[str, int, int]] = []
        self.channels = res.graph.producers[0][2]  # conv_in output

    def expect(self, name: str, channels: int) -> None:
        if channels != self.channels:
            raise ValueError(
                f"{name} expects {channels} input channels but would receive {self.channels} under "
                "this plan; keep the unit that feeds it or remove this one too"
            )

    def through(self, slot: Slot) -> None:
        resnet = self.graph[slot.resnet]
        if slot.resnet_kept:
            self.expect(slot.resnet, resnet.in_channels)
        self.channels = resnet.out_channels
        if slot.attention and slot.attention_kept:
            self.expect(slot.attention, self.graph[slot.attention].in_channels)

    def down(self) -> None:
        self.stack.append(self.graph.producers[0])
        producers = {p[0]: p for p in self.graph.producers}
        stages = self.res.down
        for i, stage in enumerate(stages):
            if stage.level_removed:
                continue
            level = self.graph[stage.path].level
            for slot in stage.kept_slots:
                self.through(slot)
                name = slot.attention if slot.attention and slot.attention_kept else slot.resnet
                self.stack.append((name, level, self.channels))
            ds = f"{stage.path}.downsamplers.0"
            if ds in producers and not (i + 1 < len(stages) and stages[i + 1].level_removed):
                self.expect(ds, producers[ds][2])  # downsamplers keep their channel count
                self.stack.append((ds, level + 1, self.channels))

    def mid(self) -> None:
        if self.res.mid is None:
            return
        for slot in self.res.mid.slots:
            if slot.resnet_kept:
                self.expect(slot.resnet, self.graph[slot.resnet].in_channels)
                self.channels = self.graph[slot.resnet].out_channels

    def up(self) -> None:
        for stage in self.res.up:
            if stage.level_removed:
                continue
            for slot in stage.kept_slots:
                self.consume(slot)
                self.channels = self.graph[slot.resnet].out_channels
                if slot.attention and slot.attention_kept:
                    self.expect(slot.attention, self.graph[slot.attention].in_channels)

    def consume(self, slot: Slot) -> None:
        producer, _, channels = self.stack.pop()  # same level: _check_levels ran first
        teacher = self.graph.edge_of(slot.resnet)
        slot.producer = producer
        if not slot.resnet_kept:
            return
        resnet = self.graph[slot.resnet]
        if slot.skip_mode == "drop":
            self.expect(slot.resnet, resnet.in_channels - teacher.channels)
        elif channels != teacher.channels or self.channels + channels != resnet.in_channels:
            raise ValueError(
                f"{slot.resnet} expects {resnet.in_channels} input channels (hidden + skip) but would "
                f"receive {self.channels} + {channels} from {producer} (mis-shaped consumer)"
            )


def _level_census(res: Resolution) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """Producers and consumers that survive the plan, per resolution level (teacher names)."""
    graph = res.graph
    removed_levels = {i for i, stage in enumerate(res.down) if stage.level_removed}
    kept_down = {s.attention if s.attention else s.resnet for st in res.down for s in st.kept_slots}
    kept_down |= {s.resnet for st in res.down for s in st.kept_slots}
    producers: dict[int, list[str]] = {}
    for name, level, _ in graph.producers:
        is_sampler = ".downsamplers." in name
        alive = name == "conv_in" or name in kept_down or (is_sampler and level not in removed_levels)
        if alive and level not in removed_levels:
            producers.setdefault(level, []).append(name)
    consumers: dict[int, list[str]] = {}
    for stage in res.up:
        for s in stage.kept_slots:
            consumers.setdefault(graph[s.resnet].level, []).append(s.resnet)
    return producers, consumers


def _check_levels(res: Resolution) -> None:
    """Every level must emit as many skips as it consumes; name the unit that breaks it (follow-the-skip)."""
    producers, consumers = _level_census(res)
    for level in sorted(set(producers) | set(consumers)):
        made, taken = producers.get(level, []), consumers.get(level, [])
        if len(made) == len(taken):
            continue
        alive = set(made)
        if len(taken) > len(made):
            unfed = next(c for c in taken if res.graph.edge_of(c).producer not in alive)
            raise ValueError(
                f"{unfed} is left unfed: it took the skip of {res.graph.edge_of(unfed).producer}, which this plan "
                f"removes (level {level}: {len(made)} skips made, {len(taken)} consumed); remove {unfed} with its "
                "attention and skip too, or keep its producer"
            )
        fed = {res.graph.edge_of(c).producer for c in taken}
        orphan = next(p for p in made if p not in fed)
        raise ValueError(
            f"the skip of {orphan} has no consumer under this plan (level {level}: {len(made)} skips made, "
            f"{len(taken)} consumed); remove {orphan} too or keep the up-stage resnet that took it"
        )


def _check_flow(res: Resolution) -> None:
    flow = _Flow(res)
    flow.down()
    flow.mid()
    _check_levels(res)
    flow.up()
