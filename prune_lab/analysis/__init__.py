"""The analyses behind the notebooks: per-unit sensitivity (BK-SDM Fig 5), skip connections (BK-SDM appendix
Fig 29) and the cost-quality trade-off of plans, as DataFrames, and figures drawn from them.

Everything here composes the library (graph walker, surgery, scoring criteria, presets, plan search, reporter);
the notebooks in ``notebooks/`` only call these functions and show what they return.

* set-up (:mod:`.sensitivity`): :func:`scoring_inputs` (batches, prompts and sampling come in as arguments; the
  demo world's are made by :mod:`prune_lab.demo.inputs`: only the demo knows the demo);
* sensitivity: :func:`fig5_units`, :func:`score_table`, :func:`wide`, :func:`importance_spread`, :func:`grouped`,
  :func:`agreement_matrix`;
* skips: :func:`skip_units`, :func:`skip_sensitivity`, :func:`example_removals`, :func:`removal_images`;
* trade-offs (:mod:`.tradeoffs`): :func:`tradeoff_plans`, :func:`plan_summary`, :func:`plan_tradeoffs`,
  :func:`pareto_mask`;
* running the notebooks: :mod:`.notebooks` (``python -m prune_lab.analysis.notebooks notebooks/*.ipynb``);
* figures (:mod:`.figures`; tables in, ``matplotlib.figure.Figure`` out): :func:`plot_grouped`, :func:`plot_matrix`,
  :func:`plot_skip_modes`, :func:`plot_image_grid`, :func:`plot_tradeoffs`.

Kim et al., "BK-SDM: A Lightweight, Fast, and Cheap Version of Stable Diffusion" (2023).
"""

from .figures import plot_grouped, plot_image_grid, plot_matrix, plot_skip_modes, plot_tradeoffs
from .sensitivity import (
    agreement_matrix,
    example_removals,
    fig5_units,
    grouped,
    importance_spread,
    removal_images,
    score_table,
    scoring_inputs,
    skip_sensitivity,
    skip_units,
    wide,
    with_places,
)
from .tradeoffs import (
    output_mse,
    pareto_mask,
    plan_summary,
    plan_tradeoffs,
    tradeoff_plans,
)

__all__ = [
    "agreement_matrix",
    "example_removals",
    "fig5_units",
    "grouped",
    "importance_spread",
    "output_mse",
    "pareto_mask",
    "plan_summary",
    "plan_tradeoffs",
    "plot_grouped",
    "plot_image_grid",
    "plot_matrix",
    "plot_skip_modes",
    "plot_tradeoffs",
    "removal_images",
    "score_table",
    "scoring_inputs",
    "skip_sensitivity",
    "skip_units",
    "tradeoff_plans",
    "wide",
    "with_places",
]
