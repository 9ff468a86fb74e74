"""`prunelab report`: parameters, MACs (thop convention and attention-inclusive) and latency of U-Nets,
their pruned students and whole text-to-image pipelines.

* :func:`report` / :func:`compare` -> :class:`Report` (and :func:`comparison_frame` for a table);
* :func:`profile_call` counts any module from one forward on `meta` tensors;
* :func:`unit_table`: the cost of every graph-walker unit from that same forward;
* :data:`BUILTIN_COMPONENTS`: public text-encoder and VAE configs of the built-in architectures.
"""

from ..runtime.counting import Profile, profile_call
from ..units import OTHER
from .components import BUILTIN_COMPONENTS, ComponentSpec, component_specs, profile_component
from .latency import Latency, LatencySettings, time_calls
from .steps import unet_call, unit_table
from .summary import Report, compare, comparison_frame, profile_unet, report, variant_plan

__all__ = [
    "BUILTIN_COMPONENTS",
    "OTHER",
    "ComponentSpec",
    "Latency",
    "LatencySettings",
    "Profile",
    "Report",
    "compare",
    "comparison_frame",
    "component_specs",
    "profile_call",
    "profile_component",
    "profile_unet",
    "report",
    "time_calls",
    "unet_call",
    "unit_table",
    "variant_plan",
]
