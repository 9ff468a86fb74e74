"""Width (channel) pruning through torch-pruning: the baseline block pruning is compared against.

* :func:`width_prune` (:mod:`.prune`): uniform channel pruning to a parameter budget, with GroupNorm groups,
  attention heads and skip concatenations respected (:mod:`.groups`, torch-pruning's dependency graph);
* :data:`WIDTH_CRITERIA` (:mod:`.criteria`): `magnitude`, `taylor` (Diff-Pruning's gradient pass), `random`;
* :func:`save_width` / :func:`load_width` (:mod:`.persist`): base config + per-module widths + safetensors, rebuilt by
  :func:`prune_lab.load_pruned`.
"""

from .criteria import WIDTH_CRITERIA, GradientPass, TaylorSettings, WidthCriterion, get_width_criterion
from .persist import WIDTH_FORMAT, is_width_pruned, load_width, save_width
from .prune import TARGET_METRICS, Target, WidthResult, width_prune
from .widths import changed_widths, layer_widths, sync_attributes

__all__ = [
    "TARGET_METRICS",
    "WIDTH_CRITERIA",
    "WIDTH_FORMAT",
    "GradientPass",
    "Target",
    "TaylorSettings",
    "WidthCriterion",
    "WidthResult",
    "changed_widths",
    "get_width_criterion",
    "is_width_pruned",
    "layer_widths",
    "load_width",
    "save_width",
    "sync_attributes",
    "width_prune",
]
