"""prune_lab: find which parts of a diffusion U-Net can be cut, cut them, and train the smaller network back.

The public API, by stage of the workflow:

* models in: :func:`load_unet`, :data:`ARCHITECTURES`;
* what exists: :func:`walk` (the graph walker) -> :class:`UNetGraph` of :class:`Unit`;
* how to change it: :func:`taken_out` (reversible analysis surgery), :func:`build_student` / :func:`apply_plan`
  (compact export), :func:`load_pruned`;
* what to change: :class:`Plan`, :func:`create_plan` (presets), :func:`make_plan`.
"""

from .backbones import (
    build_architecture,
    build_student,
    create_plan,
    list_presets,
    make_plan,
    resolve,
    taken_out,
    walk,
)
from .backbones.unet.architectures import ARCHITECTURES
from .backbones.unet.graph import UNetGraph
from .backbones.unet.surgery import ChannelInterpolation
from .formats import load_pruned
from .formats.block import apply_plan
from .models import load_unet
from .plan import Plan, fingerprint
from .units import Unit

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES",
    "ChannelInterpolation",
    "Plan",
    "UNetGraph",
    "Unit",
    "apply_plan",
    "build_architecture",
    "build_student",
    "create_plan",
    "fingerprint",
    "list_presets",
    "load_pruned",
    "load_unet",
    "make_plan",
    "resolve",
    "taken_out",
    "walk",
]
