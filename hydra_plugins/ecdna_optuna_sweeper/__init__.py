"""A Hydra sweeper that runs a persistent, resumable Optuna search.

Select it with ``hydra/sweeper=ecdna_optuna`` (or the ``sweep=optuna``
preset). The settings are in :mod:`.config`, the search loop in
:mod:`._search`, and what is logged to MLflow in :mod:`._report`.
"""
