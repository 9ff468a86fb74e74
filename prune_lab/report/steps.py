"""One denoising step of any backbone under the cost convention, and its cost unit by unit (via the backbone)."""

from __future__ import annotations

from ..backbones import backbone_for, backbone_of
from ..runtime.counting import Profile
from ..units import Graph


def unet_call(model, latent: int, device="meta", dtype=None):
    """`(fn, args)` for one denoising step of `model` (thop convention): `fn(model, *args)` is the forward.

    The inputs are the backbone's (:meth:`prune_lab.backbones.Backbone.example_call`): zeros at batch 1, latent side
    `latent`, made on `device` (`meta` for counting) in `dtype` (fp32 by default).
    """
    return backbone_for(model).example_call(model, latent, device, dtype)


def unit_table(graph: Graph, profile: Profile):
    """Params and MACs of every unit of `graph` from one profiled step (the backbone's attribution)."""
    return backbone_of(graph).unit_table(graph, profile)
