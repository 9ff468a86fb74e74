"""The transformer backbone: residual block stacks (DiT, PixArt, SD3 / SD3.5, Flux.1, Sana) behind one spec each.

One generic :class:`TransformerBackbone` serves every family in :data:`.spec.FAMILIES`; a family is a small spec of
its block stacks, the branches inside a block and how one step is called, so Flux2 / Qwen-Image / Z-Image-style
stacks are one more entry there.

* Units (:mod:`.graph`): every block of every stack (`transformer_blocks.7`, `single_transformer_blocks.12`) and the
  residual branches inside blocks (attention, cross-attention, feed-forward; for MMDiT and Flux double blocks the
  joint attention, which writes both streams, and the context stream's feed-forward `ff_context`; SD3.5's image-only
  `attn2`). Flux single blocks have no branch units: attention and MLP run in parallel into one shared `proj_out`,
  so neither is a residual branch of its own.
* Removal (:mod:`.surgery`, analysis mode, reversible): a block is identity on its residual stream(s) — DiT, PixArt
  and Sana blocks return the hidden states; SD3 and Flux blocks (double and single) return
  `(encoder_hidden_states, hidden_states)` in that order, and a Flux single block, which concatenates
  `[context, image]` inside and splits it before returning, is identity on the concatenation by returning both
  unchanged. A branch removal zeroes that branch's residual update.
* Export (:mod:`.compaction`): block removals give a stock config (`num_layers`, `num_single_layers`, renumbered
  `dual_attention_layers`) with the blocks renumbered and weights copied; SD3's `context_pre_only` last block and
  DiT's `transformer_blocks.0.norm1.emb` are handled as that module's docstring says. Branch removals are exported in
  the block format and rebuilt by :func:`prune_lab.formats.load_pruned`.
* Costs and moves (:mod:`.costs`), presets (:mod:`.presets`: `flux-lite`, `flux-mini`, `tinyfusion`), feature pairs
  (:mod:`.features`), built-ins (:mod:`.architectures`).

* Scoring: a resumable forward (:mod:`.staged`: ablation restarts each unit at its block's cached input) and
  calibration batches drawn for the family's objective (:mod:`.calibration`); capability `block_streams` (the
  `similarity` criterion); `generation` for the text-to-image families (the `clip` criterion, through their own
  pipelines; not DiT, which is class-conditional).

Not supported yet: branch units of Flux single blocks, width pruning.
"""

from __future__ import annotations

import importlib

from ..base import BACKBONES, Backbone
from . import presets  # noqa: F401  (registers the presets)
from .architectures import ARCHITECTURES
from .spec import BRANCH_KINDS, FAMILIES, family_of

#: Latent side of models whose config has no `sample_size` (Flux.1: 1024 px images, 8x VAE).
NATIVE_LATENT = 128
#: `--units` granularity -> unit kinds scored one by one.
_KINDS = {"blocks": ("block",), "branches": BRANCH_KINDS}


class TransformerBackbone(Backbone):
    """Diffusers diffusion transformers with residual block stacks (see the module docstring)."""

    name = "transformer"
    classes = tuple(FAMILIES)
    subfolder = "transformer"
    architectures = ARCHITECTURES
    unit_kinds = ("block", *BRANCH_KINDS)
    groupings = ("blocks", "branches")
    feature_scopes = ("blocks", "uniform")
    #: every family's; the text-to-image ones add `generation` (:meth:`capabilities_of`)
    capabilities = frozenset({"block_streams"})
    calibration = "own"

    def capabilities_of(self, model) -> frozenset[str]:
        """`block_streams`, plus `generation` for the text-to-image families (SD3, Flux, PixArt, Sana: the clip
        criterion generates through their pipelines); DiT is class-conditional and has no prompt to score."""
        text = self.conditioning(model) == "text"
        return self.capabilities | ({"generation"} if text else set())

    def walk(self, model):
        return _lazy("graph", "walk")(model)

    def family(self, model) -> str:
        """`dit`, `pixart`, `sd3`, `flux` or `sana`."""
        return family_of(model).name

    def score_groups(self, graph, granularity: str) -> list[list[str]]:
        return [[u.name] for u in graph.of_kind(*_KINDS[granularity])]

    def taken_out(self, model, names, *, skip_mode: str = "zero", graph=None):
        """Reversible removal; `skip_mode` is the U-Net's (there are no skips here)."""
        return _lazy("surgery", "taken_out")(model, names, graph=graph)

    def expand_removal(self, graph, names):
        return _lazy("surgery", "expand_removal")(graph, names)

    def resolve(self, plan, graph, fingerprint=None):
        return _lazy("compaction", "resolve")(plan, graph, fingerprint)

    def build_student(self, model, plan):
        return _lazy("compaction", "build_student")(model, plan)

    def rebuild(self, base_config, plan):
        return _lazy("compaction", "rebuild")(base_config, plan)

    def unit_map(self, student, *, identity=False):
        return _lazy("compaction", "unit_map")(student, identity=identity)

    def staged(self, model):
        return _lazy("staged", "StagedTransformer")(model)

    def calibration_batches(self, model, **settings):
        """Gaussian latents of the model's size (or `latent`) noised by the family's objective, called as
        :meth:`model_kwargs` calls the model (:mod:`.calibration`)."""
        settings.setdefault("latent", self.latent_size(model))
        return _lazy("calibration", "calibration_batches")(model, **settings)

    def encode_prompts(self, pipe, prompts, batch_size=8, device=None):
        return _lazy("calibration", "encode_prompts")(pipe, prompts, batch_size, device)

    def model_kwargs(self, model, x_t, t, cond):
        """Each family's pipeline call (:func:`.calibration.model_kwargs`: Flux packs the latents into tokens)."""
        return _lazy("calibration", "model_kwargs")(model, x_t, t, cond)

    def prediction(self, model, output, x_t):
        """Flux's tokens unpacked, DiT's and PixArt's learned variance dropped (:func:`.calibration.prediction`)."""
        return _lazy("calibration", "prediction")(model, output, x_t)

    def conditioning(self, model) -> str:
        """`class` for DiT (ImageNet labels), `text` for the others."""
        return _lazy("calibration", "CONDITIONING").get(family_of(model).name, "text")

    def image_stream(self, model, module: str) -> int:
        """A block of a stack returning `(context, image)` (SD3, Flux) has the image last; anything else: 0."""
        return _lazy("graph", "image_stream")(model, module)

    def latent_size(self, model) -> int:
        """The config's `sample_size`; Flux configs have none: 128 (its native 1024 px over the 8x VAE)."""
        return model.config.get("sample_size", NATIVE_LATENT)

    def example_call(self, model, latent, device="meta", dtype=None):
        import torch

        return family_of(model).call(model, latent, device, dtype or torch.float32)

    def unit_table(self, graph, profile):
        """The U-Net's attribution applies as is: blocks are the top-level rows, branches nest in them."""
        from ..unet.costs import unit_table

        return unit_table(graph, profile)

    def unit_costs(self, model, graph, resource: str, cost):
        return _lazy("costs", "unit_costs")(graph, cost)

    def moves(self, graph):
        return _lazy("costs", "candidate_moves")(graph)

    def buildable(self, model, graph, removed, plan, *, expressible=False):
        return _lazy("costs", "buildable")(model, graph, removed, plan, expressible=expressible)

    def feature_pairs(self, teacher, student, resolution, unit_map, scope):
        return _lazy("features", "feature_pairing")(student, resolution, unit_map, scope)


def _lazy(module: str, name: str):
    """`name` from submodule `module`, imported on first use (they import torch; the registry must not)."""
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


BACKBONES.register("transformer", TransformerBackbone())
