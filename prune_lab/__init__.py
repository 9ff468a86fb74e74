"""prune_lab: find which parts of a diffusion backbone can be cut, cut them, and train the smaller network back.

The public API, by stage of the workflow:

* models in: :func:`load_unet`, :data:`ARCHITECTURES`;
* what exists: :func:`walk` (the graph walker) -> :class:`UNetGraph` of :class:`Unit`;
* how to change it: :func:`taken_out` (reversible analysis surgery), :func:`build_student` / :func:`apply_plan`
  (compact export), :func:`load_pruned`;
* what comes next: :func:`controlnet_from_student` (a ControlNet for any student; `prunelab check` runs the rest);
* what to change: :class:`Plan`, :func:`create_plan` (presets), :func:`make_plan`.
"""

from .runtime.lazy import lazy_exports

# The public names are imported on first use, so `import prune_lab` (and the CLI's parser) stays cheap: torch and
# diffusers load with the first function that needs them.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        ".backbones": (
            "build_architecture",
            "build_student",
            "create_plan",
            "list_presets",
            "make_plan",
            "resolve",
            "taken_out",
            "walk",
        ),
        ".backbones.unet.architectures": ("ARCHITECTURES",),
        ".backbones.unet.graph": ("UNetGraph",),
        ".backbones.unet.surgery": ("ChannelInterpolation",),
        ".compat": ("controlnet_from_student",),
        ".formats": ("load_pruned",),
        ".formats.block": ("apply_plan",),
        ".models": ("load_unet",),
        ".plan": ("Plan", "fingerprint"),
        ".units": ("Unit",),
    },
)

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
    "controlnet_from_student",
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
