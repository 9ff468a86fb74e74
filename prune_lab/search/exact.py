"""The `exact` strategy: the plan that loses the least importance under a budget, as a mixed-integer program.

Over the same candidate moves and checks as `greedy` (:class:`~prune_lab.search.problem.Problem`), it solves

    minimise   sum_r  importance_r * y_r                      (rows removed whole; :mod:`.importance`)
    subject to x_a = OR_{m owns a} z_m,  z_m = 0 if m touches a protected atom   (a union of moves)
               y_r = AND_{a in r} x_a                          (a row is lost only when all its atoms go)
               x_a <= covered_a                                (every removed atom is accounted for by the scores)
               base - saved(x) <= limit                        (the :class:`~.costs.CostModel`, linearised exactly)
               x != S  for every set S found invalid           (lazy no-good cuts)

with `x` and the moves binary (only the moves that are not unions of smaller ones: same unions, less symmetry);
rows `y_r` and the products are AND linearisations (`v <= a`, `v <= b`, `v >= a + b - 1` forces `v = ab` on
binaries, so they need not be declared integer). `saved(x)` is the cost model's, term by term: the atoms' own
savings, a skip's only while its consumer stays (`x_s - x_s x_c`), a level's samplers when all its atoms go, and on
spatial resources the mid stage's growth, `(4^k - 1)` times its kept atoms' own cost for `k` levels gone, written
with ordered indicators `t_j = [k >= j]` as `sum_j 3 * 4^(j-1) * t_j (1 - x_a)`. The model is exact, not a bound.

The backbone's :meth:`~prune_lab.backbones.Backbone.buildable` check is not linear. Two things stand in for it:

* rows it implies, stated up front by the backbone (:meth:`~prune_lab.backbones.Backbone.plan_constraints`: the
  U-Net's skip routing and channel flow, which alone would take thousands of cuts; none by default);
* lazy constraint generation: a solution is checked as greedy checks a state (:func:`_admissible`) and, if it
  fails, cut off by the no-good `sum_{a in S} (1 - x_a) + sum_{a not in S} x_a >= 1` and the program re-solved, at
  most :data:`MAX_CUTS` times. The cut is strengthened only where that is proven: atoms whose toggle changes
  neither objective nor cost (a skip whose consumer is gone) are enumerated, and dropped from the cut when no
  toggle is admissible (:func:`_explain`); validity is not monotone, so nothing else is dropped.

The chosen plan is then counted by the reporter; if the count exceeds the budget where the model met it, the
program is re-solved with the bound tightened by that gap (at most :data:`MAX_RECOUNTS` times). The strategy's path
(for `--pareto`) is the exact front, by the epsilon-constraint method (:func:`exact_front`).

Solved with HiGHS through :func:`scipy.optimize.milp` (Huangfu & Hall, 2018) to a zero optimality gap.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from ..backbones import backbone_of
from ..units import Move
from .problem import Problem
from .strategies import Solution, Step, register_strategy

#: Most lazy cuts (invalid sets excluded) one solve may add before giving up.
MAX_CUTS = 500
#: Most re-solves when the reporter's count exceeds the model's prediction.
MAX_RECOUNTS = 10
#: Most free atoms (:func:`_free`) whose toggles are enumerated to strengthen a cut (2 ** MAX_FREE checks).
MAX_FREE = 8
#: Seconds HiGHS may spend on one program.
TIME_LIMIT = 120.0

Linear = dict[int, float]


class _Program:
    """A mixed-integer program under construction: bounded variables, sparse rows, solved for any linear objective."""

    def __init__(self) -> None:
        self.upper: list[float] = []
        self.integral: list[int] = []
        self.rows: list[tuple[Linear, float, float]] = []

    def var(self, *, integral: bool = False, upper: float = 1.0) -> int:
        self.upper.append(upper)
        self.integral.append(int(integral))
        return len(self.upper) - 1

    def row(self, coefs: Linear, lower: float = -math.inf, upper: float = math.inf) -> None:
        self.rows.append((coefs, lower, upper))

    def both(self, literals: list[tuple[int, bool]]) -> int:
        """A variable equal to the AND of `literals` ((index, negated) pairs) on binary values."""
        v = self.var()
        for i, negated in literals:  # v <= literal
            if negated:
                self.row({v: 1.0, i: 1.0}, upper=1.0)
            else:
                self.row({v: 1.0, i: -1.0}, upper=0.0)
        negatives = sum(n for _, n in literals)
        coefs = {v: 1.0}
        for i, negated in literals:  # v >= sum(literals) - (n - 1)
            coefs[i] = coefs.get(i, 0.0) + (1.0 if negated else -1.0)
        self.row(coefs, lower=negatives - len(literals) + 1.0)
        return v

    def solve(self, objective: Linear, extra: list[tuple[Linear, float, float]]):
        """Minimise `objective` subject to every row and `extra`: HiGHS's result (`x` None when it found none)."""
        rows = self.rows + extra
        entries = [(k, i, a) for k, (coefs, _, _) in enumerate(rows) for i, a in coefs.items()]
        r, c, v = (np.array(column) for column in zip(*entries)) if entries else ([], [], [])
        matrix = coo_array((v, (r, c)), shape=(len(rows), len(self.upper))).tocsr()
        lower, upper = [row[1] for row in rows], [row[2] for row in rows]
        options = {"mip_rel_gap": 0.0, "time_limit": TIME_LIMIT}
        c = np.zeros(len(self.upper))
        c[list(objective)] = list(objective.values())
        with _stdout_silenced():
            return milp(
                c,
                integrality=np.array(self.integral),
                bounds=Bounds(np.zeros(len(self.upper)), np.array(self.upper)),
                constraints=LinearConstraint(matrix, lower, upper),
                options=options,
            )


@contextlib.contextmanager
def _stdout_silenced():
    """The HiGHS in SciPy 1.17 prints a debug line to file descriptor 1 whatever its options (ERGO-Code/HiGHS#2783);
    the library never prints, so the descriptor points at the null device while it runs."""
    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


def _add(expr: Linear, index: int, coef: float) -> None:
    expr[index] = expr.get(index, 0.0) + coef


def _no_good(x: dict[str, int], removed: frozenset[str]) -> tuple[Linear, float, float]:
    """The row `sum_{a in removed} (1 - x_a) + sum_{a not in removed} x_a >= 1`: excludes exactly `removed`."""
    coefs = {i: (-1.0 if a in removed else 1.0) for a, i in x.items()}
    return coefs, 1.0 - len(removed), math.inf


def _generators(moves: list[Move]) -> list[Move]:
    """The moves that are not the union of the moves strictly inside them: their unions are every union of moves."""
    out = []
    for move in moves:
        inside = [m.atoms for m in moves if m.atoms < move.atoms]
        if frozenset().union(*inside) != move.atoms:
            out.append(move)
    return out


@dataclass
class _Formulation:
    """The program of one problem and resource (see the module docstring), and the cuts found so far.

    Attributes:
        x: atom -> removed (binary; the generating moves' binaries, :func:`_generators`, live only in rows).
        y: row name -> removed whole.
        saved: the resource saved, as a fraction of the unpruned model.
        importance: the objective (importance lost).
        cuts: no-goods of invalid sets; over: sets the solver returned a hair over a bound, with their cost.
    """

    problem: Problem
    resource: str
    program: _Program
    x: dict[str, int]
    y: dict[str, int] = field(default_factory=dict)
    saved: Linear = field(default_factory=dict)
    importance: Linear = field(default_factory=dict)
    cuts: list = field(default_factory=list)
    over: list[tuple[frozenset[str], float]] = field(default_factory=list)
    solves: int = 0
    seconds: float = 0.0

    @classmethod
    def build(cls, problem: Problem, resource: str) -> _Formulation:
        program = _Program()
        protected = problem.protected
        x = {u.name: program.var(integral=True, upper=float(u.name not in protected)) for u in problem.graph.atoms()}
        form = cls(problem, resource, program, x)
        form._union_of_moves()
        form._rows()
        form._coverage()
        backbone_of(problem.graph).plan_constraints(problem.graph, program, x, expressible=problem.expressible)
        form.saved = _Savings(form).expression()
        return form

    def _union_of_moves(self) -> None:
        """x_a = OR of the generating moves that own a; a move touching a protected atom is never taken."""
        owners: dict[str, list[int]] = {a: [] for a in self.x}
        for move in _generators(self.problem.moves):
            zm = self.program.var(integral=True, upper=float(not move.atoms & self.problem.protected))
            for a in move.atoms:
                self.program.row({self.x[a]: 1.0, zm: -1.0}, lower=0.0)
                owners[a].append(zm)
        for a, zs in owners.items():
            self.program.row({self.x[a]: 1.0, **{zm: -1.0 for zm in zs}}, upper=0.0)

    def _rows(self) -> None:
        """y_r = AND of its atoms, weighted by its importance in the objective."""
        for row in self.problem.importance.rows:
            self.y[row.name] = self.program.both([(self.x[a], False) for a in sorted(row.atoms)])
            self.importance[self.y[row.name]] = row.importance

    def _covered(self, atom: str, rows: dict[str, int]) -> Linear:
        """At least 1 exactly when `atom` is accounted for, as :meth:`Importance.uncovered` reads the scores."""
        unit = self.problem.graph[atom]
        expr = {rows[atom]: 1.0} if atom in rows else {}
        if unit.kind == "skip" and unit.consumer in self.x:
            _add(expr, self.x[unit.consumer], 1.0)
        if unit.kind == "attention" and unit.children:
            all_children = self.program.var()
            for child in unit.children:
                self.program.row(
                    {all_children: 1.0, **{i: -a for i, a in self._covered(child, rows).items()}}, upper=0
                )
            _add(expr, all_children, 1.0)
        return expr

    def _coverage(self) -> None:
        """x_a <= covered_a: a move may only remove what the scores cover."""
        rows = {a: self.y[r.name] for r in self.problem.importance.rows for a in r.atoms}
        for atom, xa in self.x.items():
            expr = self._covered(atom, rows)
            self.program.row({xa: 1.0, **{i: -a for i, a in expr.items()}}, upper=0.0)


class _Savings:
    """The cost model's saving of one resource as a linear expression over the program's variables."""

    def __init__(self, form: _Formulation) -> None:
        self.form, self.program, self.x = form, form.program, form.x
        self.costs, self.resource = form.problem.costs, form.resource

    def expression(self) -> Linear:
        """`saved(x) / base` (:meth:`CostModel.saved`, term by term; scaled so HiGHS's tolerances are relative)."""
        expr: Linear = {}
        self._own(expr)
        gone = [self.program.both([(self.x[a], False) for a in sorted(atoms)]) for _, atoms in self.costs.levels]
        extra = self.costs.level_extra.get(self.resource, {})
        for (key, _), g in zip(self.costs.levels, gone):
            _add(expr, g, extra.get(key, 0.0))
        if gone and self.costs.mid and self.resource in self.costs.spatial:
            self._growth(expr, gone)
        scale = self.costs.base[self.resource]
        return {i: a / scale for i, a in expr.items() if a}

    def _own(self, expr: Linear) -> None:
        """Each atom's own saving; a skip's only while its consumer stays (`x_s - x_s x_c`)."""
        graph, own = self.form.problem.graph, self.costs.own[self.resource]
        for atom, xa in self.x.items():
            saving = own.get(atom, 0.0)
            if not saving:
                continue
            _add(expr, xa, saving)
            consumer = graph[atom].consumer if graph[atom].kind == "skip" else None
            if consumer in self.x:
                _add(expr, self.program.both([(xa, False), (self.x[consumer], False)]), -saving)

    def _growth(self, expr: Linear, gone: list[int]) -> None:
        """The kept mid atoms cost `4^k - 1` times more for `k` levels gone: `sum_j 3 * 4^(j-1) t_j (1 - x_a)`."""
        t = [self.program.var(integral=True) for _ in gone]  # t_j = [at least j levels gone]
        self.program.row({**{tj: 1.0 for tj in t}, **{g: -1.0 for g in gone}}, lower=0.0, upper=0.0)
        for before, after in zip(t, t[1:]):
            self.program.row({before: 1.0, after: -1.0}, lower=0.0)
        own = self.costs.own[self.resource]
        for atom in sorted(self.costs.mid):
            if own.get(atom, 0.0) and atom in self.x:
                for j, tj in enumerate(t):
                    _add(expr, self.program.both([(tj, False), (self.x[atom], True)]), -3.0 * 4**j * own[atom])


# ------------------------------------------------------------------------------------------------ solving
def _moves_of(problem: Problem, removed: frozenset[str]) -> list[Move] | None:
    """Moves whose union is `removed` (largest first, each adding something), in forward order; None if none."""
    inside = sorted((m for m in problem.moves if m.atoms <= removed), key=lambda m: (-len(m.atoms), m.order))
    taken, covered = [], set()
    for move in inside:
        if not move.atoms <= covered:
            taken.append(move)
            covered |= move.atoms
    return sorted(taken, key=lambda m: (m.order, len(m.atoms))) if covered == removed else None


def _admissible(problem: Problem, removed: frozenset[str]) -> bool:
    """What greedy asks of every state: a union of moves, nothing protected, covered by the scores, buildable."""
    if removed & problem.protected or _moves_of(problem, removed) is None:
        return False
    return not problem.importance.uncovered(problem.graph, removed) and problem.valid(removed)


def _value(problem: Problem, removed: frozenset[str], resource: str) -> tuple[float, float]:
    return problem.importance.lost(removed), problem.costs.estimate(removed)[resource]


def _same(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return all(math.isclose(u, v, rel_tol=1e-12, abs_tol=1e-9) for u, v in zip(a, b))


def _free(form: _Formulation, removed: frozenset[str]) -> list[str]:
    """Atoms whose toggle changes neither the importance lost nor the predicted cost (at most :data:`MAX_FREE`)."""
    problem, value = form.problem, _value(form.problem, removed, form.resource)
    free = [
        a for a in form.x if a not in problem.protected and _same(_value(problem, removed ^ {a}, form.resource), value)
    ]
    return free[:MAX_FREE]


def _explain(form: _Formulation, removed: frozenset[str]) -> frozenset[str] | None:
    """An admissible set worth the same as the inadmissible `removed`, or None after cutting `removed` off.

    Its variants toggle the free atoms (:func:`_free`, e.g. a skip whose consumer is gone). If none is admissible,
    every set agreeing with `removed` on the other atoms is inadmissible, so the no-good over those is valid;
    if some variant is admissible but worth something else, only `removed` itself is cut.
    """
    free, value = _free(form, removed), _value(form.problem, removed, form.resource)
    clean = True
    for toggles in itertools.product((False, True), repeat=len(free)):
        variant = removed ^ {a for a, t in zip(free, toggles) if t}
        if any(toggles) and _admissible(form.problem, variant):
            if _same(_value(form.problem, variant, form.resource), value):
                return variant
            clean = False
    fixed = {a: i for a, i in form.x.items() if a not in free} if clean else form.x
    form.cuts.append(_no_good(fixed, removed - set(free) if clean else removed))
    return None


def _find(
    form: _Formulation, objective: Linear, bound: float | None, floor: float | None = None
) -> frozenset[str] | None:
    """The admissible removal minimising `objective` whose predicted cost is at most `bound` (None: any), or None.

    Lazy constraint generation: solve, check the set (:func:`_admissible`), cut it off (:func:`_explain`) if not.
    `floor`: a value `objective` cannot go below at the optimum (stated as a row, it tightens HiGHS's relaxation).
    """
    problem, resource = form.problem, form.resource
    base = problem.costs.base[resource]
    for _ in range(MAX_CUTS + 1):
        extra = list(form.cuts)
        if bound is not None:
            extra += [_no_good(form.x, s) for s, cost in form.over if cost > bound]
            extra.append((form.saved, (base - bound) / base, math.inf))
        if floor is not None:
            extra.append((objective, floor - 1e-9 * max(1.0, abs(floor)), math.inf))
        start = time.perf_counter()
        result = form.program.solve(objective, extra)
        form.solves, form.seconds = form.solves + 1, form.seconds + time.perf_counter() - start
        if result.status == 2:
            return None
        if result.status != 0:
            raise ValueError(f"exact search: HiGHS stopped ({result.message}); use --strategy greedy")
        removed = frozenset(a for a, i in form.x.items() if result.x[i] > 0.5)
        cost = problem.costs.estimate(removed)[resource]
        if bound is not None and cost > bound:  # within HiGHS's feasibility tolerance, not within the bound
            form.over.append((removed, cost))
            continue
        found = removed if _admissible(problem, removed) else _explain(form, removed)
        if found is not None:
            return found
    raise ValueError(f"exact search: {MAX_CUTS} invalid plans cut and still none valid; use --strategy greedy")


def _info(form: _Formulation, since: float, **more) -> dict:
    """Solver statistics for the plan's `meta` (`seconds`: in HiGHS since `since`, not building the program or
    counting; `cuts`: every cut the program holds)."""
    return {
        "solver": "HiGHS (scipy.optimize.milp)",
        "cuts": len(form.cuts),
        "seconds": round(form.seconds - since, 3),
        **more,
    }


def solve(
    problem: Problem, resource: str, limits: Sequence[float], count: Callable[[frozenset[str]], dict]
) -> list[Solution]:
    """For each limit, the plan losing the least importance whose reporter count `count(removed)[resource]` is at
    most it: one program for all of them, its cuts kept, and the least importance lost under a looser bound stated
    as a floor (it cannot lose less under a tighter one).

    When the count exceeds the model's prediction, the program is re-solved with the bound lowered by that gap (at
    most :data:`MAX_RECOUNTS` times). An infeasible limit gets the cheapest valid plan, `feasible` False.
    """
    form = _Formulation.build(problem, resource)
    solved: list[tuple[float, float]] = []  # (predicted bound, least importance lost under it)
    out: dict[float, Solution] = {}
    for limit in sorted(set(limits), reverse=True):
        infeasible = next((s for s in out.values() if not s.feasible), None)  # so is every tighter limit
        out[limit] = infeasible or _solve_one(form, limit, count, solved)
    return [out[limit] for limit in limits]


def _solve_one(form: _Formulation, limit: float, count, solved: list[tuple[float, float]]) -> Solution:
    problem, resource, margin = form.problem, form.resource, 0.0
    solves, seconds = form.solves, form.seconds
    for recounts in range(MAX_RECOUNTS):
        bound = limit - margin
        floor = max((lost for b, lost in solved if b >= bound), default=None)
        found = _find(form, form.importance, bound, floor)
        info = {"recounts": recounts, "margin": margin, "solves": form.solves - solves}
        if found is None:
            lowest = _find(form, {i: -a for i, a in form.saved.items()}, None)
            return Solution(lowest, _moves_of(problem, lowest), False, _info(form, seconds, **info))
        solved.append((bound, problem.importance.lost(found)))
        counted = count(found)[resource]
        if counted <= limit:
            info["solves"] = form.solves - solves
            return Solution(found, _moves_of(problem, found), True, _info(form, seconds, **info))
        margin = counted - problem.costs.estimate(found)[resource]
    raise ValueError(f"exact search: the reporter still exceeds {limit:g} after {MAX_RECOUNTS} re-solves")


def _step(problem: Problem, removed: frozenset[str]) -> Step:
    moves = _moves_of(problem, removed)
    members = tuple(m for move in moves for m in move.members)
    move = Move("exact", members, removed, min((m.order for m in moves), default=0))
    return Step(move, removed, problem.importance.lost(removed), problem.costs.estimate(removed))


@register_strategy(
    "exact", "least importance lost under the budget: an integer program (HiGHS) with lazy validity cuts", solve=solve
)
def exact_front(problem: Problem, resource: str) -> list[Step]:
    """The exact front by the epsilon-constraint method: the least-importance plan under each bound, the bound
    then lowered just below that plan's predicted cost, until no valid plan saves more.

    Unlike a greedy path the plans are not nested; their costs fall and their importance lost rises strictly (of
    several plans losing the same importance only the cheapest is kept).
    """
    form = _Formulation.build(problem, resource)
    step = 1e-6 * problem.costs.base[resource]
    path: list[Step] = []
    bound, floor = problem.costs.base[resource] - step, None
    while (found := _find(form, form.importance, bound, floor)) is not None:
        point = _step(problem, found)
        if path and math.isclose(point.importance_lost, path[-1].importance_lost, rel_tol=1e-9, abs_tol=1e-12):
            path[-1] = point
        else:
            path.append(point)
        bound, floor = point.estimate[resource] - step, point.importance_lost
    return path
