"""The backbone seam: everything that knows a model family's internals, behind one interface.

A capability (scoring, search, report, distill, evaluation, the CLI) holds a model and a
:class:`~prune_lab.units.Graph` and asks the model's :class:`Backbone` for the rest: the walk, reversible surgery, what
a plan means and the compact student it describes, a resumable staged forward, one denoising call under the cost
convention, per-unit cost attribution, search moves and the checks a searched plan must pass, feature pairs for
distillation and presets.

A family is one subpackage of :mod:`prune_lab.backbones` that subclasses :class:`Backbone` and registers an instance
with :data:`BACKBONES` under its name, listing the diffusers classes it handles; :func:`backbone_for` picks it by the
model's class. The U-Net (:mod:`prune_lab.backbones.unet`) is the worked example. Families with a residual stream of
blocks (DiT, MMDiT) fit the same methods: their units are blocks and branches, removal is identity on the stream, and
methods that do not apply (e.g. skips) return nothing.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from ..runtime.registry import Registry
from ..units import Graph

#: Modules whose import registers the built-in backbones (imported on first lookup).
BUILTIN_BACKBONES = ("prune_lab.backbones.unet", "prune_lab.backbones.transformer")


@dataclass(frozen=True)
class Preset:
    """A published architecture as a rule over a graph: `build(graph, scores) -> names to keep`.

    Attributes:
        name: registry key (`--preset NAME`).
        families: model families it applies to (:meth:`Backbone.family`).
        description: one line, with its source.
    """

    name: str
    families: tuple[str, ...]
    description: str
    build: Callable[[Graph, Mapping[str, float] | None], set[str]]


@dataclass
class Compacted:
    """A compact student in memory, before anything is written.

    Attributes:
        student: the compact model (weights from the teacher).
        resolution: the backbone's resolution of the plan (what survives, how it is wired).
        config: a plain diffusers config that rebuilds `student`, or None (then `load_pruned` rebuilds it).
    """

    student: Any
    resolution: Any
    config: dict | None

    @property
    def expressible(self) -> bool:
        return self.config is not None


@dataclass
class UnitCosts:
    """What removals save of one resource.

    Attributes:
        own: atom -> its own saving (a container's cost minus the members counted separately).
        groups: (key, atoms) whose joint removal saves `extra[key]` more (e.g. an innermost level's samplers).
        extra: key -> that additional saving.
        grows: atoms whose cost grows by 4x per group in `groups` removed (e.g. a mid stage at a finer resolution).
    """

    own: dict[str, float]
    groups: list[tuple[int, frozenset[str]]]
    extra: dict[int, float]
    grows: frozenset[str] = frozenset()


class LinearRows(Protocol):
    """Where :meth:`Backbone.plan_constraints` states its rows: a mixed-integer program over binary variables
    (:class:`prune_lab.search.exact` builds one). Variables are column indices; a row is `lower <= sum(coefs) <=
    upper`."""

    def var(self, *, integral: bool = False, upper: float = 1.0) -> int:
        """A new variable in `[0, upper]` (binary when `integral` and `upper` is 1)."""
        ...

    def row(self, coefs: dict[int, float], lower: float = ..., upper: float = ...) -> None:
        """The row `lower <= sum_i coefs[i] * v_i <= upper` (an omitted side is unbounded)."""
        ...

    def both(self, literals: list[tuple[int, bool]]) -> int:
        """A variable equal to the AND of `literals` ((variable, negated) pairs) whenever they are binary."""
        ...


class Backbone:
    """One model family's internals. Subclasses implement every method their family supports.

    Class attributes:
        name: registry key.
        classes: diffusers model class names this backbone handles.
        subfolder: the model's folder inside a pipeline (`unet`, `transformer`).
        architectures: built-in names -> (diffusers class name, public config), instantiated with random or `meta`
            weights by :meth:`build`.
        unit_kinds: every unit kind the walker makes; groupings: `--units` granularities (:meth:`score_groups`);
            feature_scopes: `--feature-layers` scopes (:meth:`feature_pairs`).
        capabilities: what criteria may rely on (a criterion's `requires`): `generation` (images through the
            model's own pipeline, with units taken out), `block_streams` (blocks map a residual stream to one of
            the same shape, so a block's input and output compare).
        calibration: where scoring's calibration batches come from: `latent` (the latent-diffusion sets of
            :mod:`prune_lab.scoring.calibration`: VAE latents, one text encoder, caches) or `own`
            (:meth:`calibration_batches`).
    """

    name: str = ""
    classes: tuple[str, ...] = ()
    subfolder: str = "unet"
    architectures: Mapping[str, tuple[str, dict]] = {}
    unit_kinds: tuple[str, ...] = ()
    groupings: tuple[str, ...] = ()
    feature_scopes: tuple[str, ...] = ()
    capabilities: frozenset[str] = frozenset()
    calibration: str = "latent"

    # ------------------------------------------------------------------------------------------ what exists
    def capabilities_of(self, model) -> frozenset[str]:
        """The capabilities of `model` itself: :attr:`capabilities` (what every model of the family has), plus what
        only some of its models have (a text-to-image transformer's `generation`)."""
        return self.capabilities

    def walk(self, model) -> Graph:
        """Every prunable unit of `model`, in forward order (works on `meta` weights)."""
        raise NotImplementedError

    def family(self, model) -> str:
        """The preset family of `model` (e.g. `sd`, `sdxl`)."""
        raise NotImplementedError

    def score_groups(self, graph: Graph, granularity: str) -> list[list[str]]:
        """The units scored together at `granularity` (one of :attr:`groupings`), each a list of unit names."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------ how to change it
    def taken_out(
        self, model, names: Iterable[str], *, skip_mode: str = "zero", graph: Graph | None = None
    ) -> AbstractContextManager:
        """Reversibly take `names` out of `model` (analysis mode); the model is bit-identical afterwards."""
        raise NotImplementedError

    def expand_removal(self, graph: Graph, names: Iterable[str]) -> list[str]:
        """The atoms that taking `names` out swaps (groups expand to their members)."""
        raise NotImplementedError

    def resolve(self, plan, graph: Graph, fingerprint: str | None = None):
        """Validate `plan` against `graph`; the structure of the student it describes. Raises ValueError."""
        raise NotImplementedError

    def build_student(self, model, plan) -> Compacted:
        """The compact student of `plan`, initialised from `model` (nothing is written)."""
        raise NotImplementedError

    def rebuild(self, base_config: dict, plan):
        """The compact skeleton (`meta` weights) of `plan` over a model of `base_config` (:mod:`prune_lab.formats`)."""
        raise NotImplementedError

    def unit_map(self, student, *, identity: bool = False) -> dict[str, str]:
        """Student module path -> teacher module path for every kept unit of a compacted student (with `identity`:
        each unit to itself, for a student whose units never moved)."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------- running it
    def staged(self, model):
        """A resumable step-by-step forward (prefix caching for output ablation), or None if not supported.

        It has `prepare(**inputs) -> (context, state)`, `run(context, state, start=0, cache=None) -> output` (with
        `cache`, the state before every step is appended to it) and `restart_index(graph, members) -> step`."""
        return None

    def calibration_batches(self, model, **settings) -> list:
        """`[(model(**kwargs) keyword arguments, target)]` of calibration batches drawn for `model` (settings:
        `samples`, `timesteps`, `batch_size`, `seed`, `conditioning` from :meth:`encode_prompts` or None for random,
        `scheduler`, `latents`: real images' clean latents or None for Gaussian ones), for a backbone whose
        :attr:`calibration` is `own`."""
        raise NotImplementedError

    def encode_prompts(self, pipe, prompts: list[str], batch_size: int = 8, device=None) -> dict:
        """Conditioning tensors of `prompts` through the pipeline's own encoders, under the model's keyword names (for
        :meth:`calibration_batches` and :meth:`model_kwargs`): on `device`, or computed on the pipeline's device and
        returned on the CPU."""
        raise NotImplementedError

    def model_kwargs(self, model, x_t, t, cond: Mapping[str, Any]) -> dict:
        """Keyword arguments of `model(**kwargs)` for one denoising step, as the family's pipeline calls it (what
        scoring's calibration batches hold and what distillation trains with).

        Args:
            model: the model (its config is read; a wrapper of it, e.g. DDP, may then be called with the result).
            x_t: noisy latents (B, C, h, w) as the VAE lays them out (a family that takes tokens packs them here).
            t: (B,) the training schedule's timestep (integer t of DDPM, σ·N of flow matching;
                :func:`prune_lab.runtime.schedule.noised`).
            cond: conditioning tensors under the model's keyword names (`encoder_hidden_states`,
                `pooled_projections`, `encoder_attention_mask`, `class_labels`; SDXL's `text_embeds`, `time_ids`).
        """
        raise NotImplementedError

    def prediction(self, model, output, x_t):
        """The part of a step's output (`model(**kwargs).sample`) that regresses the training target, shaped as x_t
        (B, C, h, w) (e.g. tokens unpacked, a learned variance dropped); by default the output itself."""
        return output

    def denoise(self, model, x_t, t, cond: Mapping[str, Any], *, module=None):
        """One step's prediction (B, C, h, w): :meth:`prediction` of `module(**model_kwargs(model, ...)).sample`.

        Args:
            module: what to call, `model` or a wrapper of it (DDP); default `model`.
        """
        output = (model if module is None else module)(**self.model_kwargs(model, x_t, t, cond)).sample
        return self.prediction(model, output, x_t)

    def conditioning(self, model) -> str:
        """What `model` is conditioned on: `text` (caption states), `class` (class labels) or `none`."""
        return "text"

    def image_stream(self, model, module: str) -> int:
        """Where the image stream is in the tuple output of `module` (0 unless a family returns several streams)."""
        return 0

    def latent_size(self, model) -> int:
        """The latent side one step is counted at by default (the config's `sample_size`)."""
        return model.config.sample_size

    def example_call(self, model, latent: int, device="meta", dtype=None):
        """`(fn, args)` for one denoising step under the cost convention: `fn(model, *args)` runs it."""
        raise NotImplementedError

    def unit_table(self, graph: Graph, profile):
        """Per-unit params and MACs (a DataFrame) from a :class:`~prune_lab.runtime.counting.Profile` of one step."""
        raise NotImplementedError

    def unit_costs(self, model, graph: Graph, resource: str, cost: Callable[[str], float]):
        """What removing each atom saves of `resource`, given `cost(module path)` from one profiled step.

        Returns a :class:`UnitCosts`: own saving per atom, plus structural extras (e.g. resolution levels).
        """
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------- searching
    def moves(self, graph: Graph) -> list:
        """Candidate removals for plan search."""
        raise NotImplementedError

    def removal_actions(self, graph: Graph, removed: frozenset[str]) -> dict[str, str]:
        """The plan actions removing exactly the atoms `removed` needs (e.g. substitutes)."""
        return {}

    def buildable(self, model, graph: Graph, removed: frozenset[str], plan, *, expressible: bool = False) -> bool:
        """Whether removing `removed` (atoms) as `plan` does leaves a student the export can build (and, with
        `expressible`, one with a plain diffusers config)."""
        raise NotImplementedError

    def plan_constraints(
        self, graph: Graph, program: LinearRows, removed: Mapping[str, int], *, expressible: bool = False
    ) -> None:
        """State, as linear rows of `program`, conditions every :meth:`buildable` removal satisfies.

        `removed` maps every atom of `graph` to its binary variable (1: removed). The rows must be *necessary*: any
        set `buildable` accepts (with `expressible`, as a plain config) must satisfy them, so adding them never
        changes an exact search's optimum. They need not be sufficient: the exact search
        (:mod:`prune_lab.search.exact`) still checks every set it finds with :meth:`buildable` and cuts off the
        ones rejected, one no-good row at a time. The default states nothing (cuts alone, correct but slow where
        many sets fail); a family whose validity rules are linear in removals (the U-Net's skip routing and channel
        flow) states them here, which is what makes the search take seconds at full size.
        """
        return None

    # ------------------------------------------------------------------------------------------ distilling
    def feature_pairs(self, teacher, student, resolution, unit_map: Mapping[str, str] | None, scope: str) -> list:
        """Teacher/student feature points of equal shape to distil at `scope` (e.g. `stages`, `units`)."""
        raise NotImplementedError

    # -------------------------------------------------------------------------------------------- building
    def build(self, name: str, *, meta: bool = False, seed: int = 0):
        """A built-in architecture with random (seeded) weights, or on the `meta` device."""
        import torch

        cls_name, config = self.architectures[name]
        cls = model_class(cls_name)
        if meta:
            with torch.device("meta"):
                return cls(**config).eval()
        torch.manual_seed(seed)
        return cls(**config).eval()


def _load_builtin() -> None:
    for module in BUILTIN_BACKBONES:
        importlib.import_module(module)


#: Registered backbones, by name.
BACKBONES: Registry[Backbone] = Registry("backbone", loader=_load_builtin)
#: Registered presets, by name (each backbone registers its own).
PRESETS: Registry[Preset] = Registry("preset", loader=_load_builtin, hint="`prunelab plan --help` lists them")


def backbone_for_class(class_name: str) -> Backbone:
    """The registered backbone that handles the diffusers model class called `class_name` (e.g. read from a
    pipeline's `model_index.json`, before any model loads).

    Raises:
        ValueError: no registered backbone handles that class.
    """
    for _, backbone in BACKBONES.items():
        if class_name in backbone.classes:
            return backbone
    handled = [c for _, b in BACKBONES.items() for c in b.classes]
    raise ValueError(f"prune_lab has no backbone for a {class_name}; it handles: {', '.join(handled)}")


def model_class(class_name: str) -> type:
    """The diffusers model class called `class_name`, if a registered backbone handles it.

    Raises:
        ValueError: no registered backbone handles that class.
    """
    import diffusers

    backbone_for_class(class_name)
    return getattr(diffusers, class_name)


def backbone_for(model) -> Backbone:
    """The registered backbone that handles `model`'s class (or any class it derives from).

    Raises:
        ValueError: no backbone handles it.
    """
    if model is None or isinstance(model, (str, bytes, os.PathLike)):
        raise TypeError(
            f"model must be a loaded model object (prune_lab.load_unet(name).unet), got {type(model).__name__} "
            f"{model!r:.60}"
        )
    names = [cls.__name__ for cls in type(model).__mro__]
    for _, backbone in BACKBONES.items():
        if any(n in backbone.classes for n in names):
            return backbone
    handled = [c for _, b in BACKBONES.items() for c in b.classes]
    raise ValueError(
        f"prune_lab has no backbone for the model, a {type(model).__name__}; it handles: {', '.join(handled)}"
    )


def get_backbone(name: str) -> Backbone:
    """The backbone registered as `name`."""
    return BACKBONES.get(name)


def instantiate(cls: type, config: dict, *, meta: bool = True):
    """`cls.from_config(config)`, on the `meta` device by default (structure only, no memory)."""
    import torch

    if meta:
        with torch.device("meta"):
            return cls.from_config(config)
    return cls.from_config(config)


def backbone_of(graph: Graph) -> Backbone:
    """The backbone that walked `graph`."""
    return BACKBONES.get(graph.backbone)


def granularities() -> list[str]:
    """Every `--units` granularity some registered backbone scores at."""
    return list(dict.fromkeys(g for _, b in BACKBONES.items() for g in b.groupings))


def feature_scopes() -> list[str]:
    """Every `--feature-layers` scope some registered backbone pairs features at."""
    return list(dict.fromkeys(s for _, b in BACKBONES.items() for s in b.feature_scopes))


def architectures() -> dict[str, Backbone]:
    """Every built-in architecture name -> the backbone that builds it."""
    return {name: b for _, b in BACKBONES.items() for name in b.architectures}
