"""`prunelab study`: compare pruning plans after equal retraining (arms as specs, one recipe, the same prompts and
noises for every model, paired differences, importance lost against quality).

* :mod:`~prune_lab.study.specs`: the arm grammar; :mod:`~prune_lab.study.metrics`: the metric registry;
* :mod:`~prune_lab.study.run`: :func:`run_study` and its tasks; :mod:`~prune_lab.study.work`: the work folder;
* :mod:`~prune_lab.study.results`, :mod:`~prune_lab.study.stats`, :mod:`~prune_lab.study.report`: what comes out.
"""
