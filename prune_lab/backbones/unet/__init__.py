"""The U-Net backbone (diffusers `UNet2DConditionModel`, `UNet2DModel`): the worked example of a family.

Modules: :mod:`.graph` (the walker: resnets, attention blocks, transformer layers, skips, mid, stages),
:mod:`.surgery` (reversible removal with identity / channel-interpolation substitutes, zeroed or dropped skips),
:mod:`.resolve` (what a plan means: slots, positional skip routing, channel checks), :mod:`.compaction` (the compact
student and its diffusers config), :mod:`.staged` (resumable forward for prefix caching), :mod:`.costs` (one step
under the thop convention, per-unit cost attribution), :mod:`.moves` (search moves and checks), :mod:`.constraints`
(those checks as linear rows for exact search), :mod:`.presets` (BK-SDM, SSD-1B, Vega), :mod:`.architectures` (SD
v1/v2, SDXL configs).
"""

from __future__ import annotations

from ..base import BACKBONES, Backbone
from . import presets  # noqa: F401  (registers the presets)
from .architectures import ARCHITECTURES

#: SDXL's added conditions, nested under `added_cond_kwargs` in the U-Net's call.
ADDED_COND_KEYS = ("text_embeds", "time_ids")
#: `--units` granularity -> unit kinds scored one by one (`pairs` is built from the stage slots).
_SINGLE_KINDS = {
    "blocks": ("resnet", "attention"),
    "transformer_layers": ("transformer_layer",),
    "stages": ("stage", "mid"),
    "skips": ("skip",),
}


def unet_kwargs(cond: dict) -> dict:
    """U-Net keyword arguments from a flat conditioning dict (SDXL's added conditions nested as diffusers wants)."""
    kwargs = {k: v for k, v in cond.items() if k not in ADDED_COND_KEYS}
    added = {k: cond[k] for k in ADDED_COND_KEYS if k in cond}
    if added:
        kwargs["added_cond_kwargs"] = added
    return kwargs


class UNetBackbone(Backbone):
    """Diffusers U-Nets: SD v1.x / v2.x, SDXL, unconditional `UNet2DModel`."""

    name = "unet"
    classes = ("UNet2DConditionModel", "UNet2DModel")
    subfolder = "unet"
    architectures = {name: ("UNet2DConditionModel", config) for name, config in ARCHITECTURES.items()}
    unit_kinds = ("resnet", "attention", "transformer_layer", "skip", "mid", "stage")
    groupings = ("blocks", "transformer_layers", "pairs", "stages", "skips")
    feature_scopes = ("stages", "units")
    capabilities = frozenset({"generation"})

    def walk(self, model):
        from .graph import walk

        return walk(model)

    def family(self, model) -> str:
        """`sdxl` (text_time added embeddings), `sd` (other conditional U-Nets) or `unet2d`."""
        if type(model).__name__ == "UNet2DModel":
            return "unet2d"
        return "sdxl" if model.config.get("addition_embed_type") == "text_time" else "sd"

    def score_groups(self, graph, granularity: str) -> list[list[str]]:
        if granularity == "pairs":
            from .moves import stage_slots

            groups = [["mid_block"]] if "mid_block" in graph else []
            for stage in graph.of_kind("stage"):
                groups.extend(stage_slots(graph, stage.name))
            return groups
        return [[u.name] for u in graph.of_kind(*_SINGLE_KINDS[granularity])]

    def taken_out(self, model, names, *, skip_mode: str = "zero", graph=None):
        from .surgery import taken_out

        return taken_out(model, names, skip_mode=skip_mode, graph=graph)

    def expand_removal(self, graph, names):
        from .surgery import expand_removal

        return expand_removal(graph, names)

    def resolve(self, plan, graph, fingerprint=None):
        from .resolve import resolve

        return resolve(plan, graph, fingerprint)

    def build_student(self, model, plan):
        from .compaction import build_student

        return build_student(model, plan)

    def rebuild(self, base_config, plan):
        from .compaction import rebuild

        return rebuild(base_config, plan)

    def unit_map(self, student, *, identity=False):
        from .compaction import unit_map

        return unit_map(student, identity=identity)

    def staged(self, model):
        from .staged import StagedUNet, supports_staging

        return StagedUNet(model) if supports_staging(model) else None

    def model_kwargs(self, model, x_t, t, cond):
        """`sample`, `timestep` and the conditioning (:func:`unet_kwargs`), as the SD pipelines call the U-Net."""
        return {"sample": x_t, "timestep": t, **unet_kwargs(cond)}

    def conditioning(self, model) -> str:
        """`text` for U-Nets with cross-attention, `none` for unconditional ones (`UNet2DModel`)."""
        return "text" if model.config.get("cross_attention_dim") else "none"

    def example_call(self, model, latent, device="meta", dtype=None):
        from .costs import unet_call

        return unet_call(model, latent, device, dtype) if dtype is not None else unet_call(model, latent, device)

    def unit_table(self, graph, profile):
        from .costs import unit_table

        return unit_table(graph, profile)

    def unit_costs(self, model, graph, resource: str, cost):
        from .costs import unit_costs

        return unit_costs(model, graph, resource, cost)

    def moves(self, graph):
        from .moves import candidate_moves

        return candidate_moves(graph)

    def removal_actions(self, graph, removed):
        from .moves import removal_actions

        return removal_actions(graph, removed)

    def buildable(self, model, graph, removed, plan, *, expressible=False):
        from .moves import buildable

        return buildable(model, graph, removed, plan, expressible=expressible)

    def plan_constraints(self, graph, program, removed, *, expressible=False):
        from .constraints import add_constraints

        add_constraints(program, removed, graph, expressible)

    def feature_pairs(self, teacher, student, resolution, unit_map, scope):
        from .features import feature_pairing

        return feature_pairing(teacher, student, resolution, unit_map, scope)


BACKBONES.register("unet", UNetBackbone())
