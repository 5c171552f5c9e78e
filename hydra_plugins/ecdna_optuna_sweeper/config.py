"""Settings of the ``ecdna_optuna`` sweeper, registered in Hydra's ConfigStore.

Hydra imports this module when it scans ``hydra_plugins``, so it stays free
of heavy imports. It also avoids ``from __future__ import annotations``:
Hydra runs the module without adding it to ``sys.modules``, and
``dataclass`` then fails to resolve string annotations.
"""

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore


@dataclass
class EcdnaOptunaSweeperConf:
    """Settings of one Optuna search. Override any field as ``hydra.sweeper.<field>``."""

    _target_: str = "hydra_plugins.ecdna_optuna_sweeper.optuna_sweeper.EcdnaOptunaSweeper"

    # COMPLETE trials the study should reach in total. A restarted search runs only the missing ones.
    n_trials: int = 20
    # Trials sampled per batch and launched together. The launcher decides how many of them run at once.
    n_jobs: int = 1
    # Whether to minimize or maximize the value the task returns.
    direction: str = "minimize"
    # Name of the study in the storage. Runs with the same name and storage continue one study.
    study_name: str = "ecdna-${model.name}"
    # SQLAlchemy URL of the Optuna storage. null means sqlite:///<absolute tracking.dir>/optuna.db.
    storage: str | None = None
    # Seed of the TPE sampler, combined with the number of trials already in the study.
    seed: int = 0
    # Trials sampled at random before TPE starts modelling the objective.
    n_startup_trials: int = 10
    # Failed trials one invocation tolerates, and one more stops it. null tolerates n_trials of them.
    max_failures: int | None = None
    # Search space as Hydra override values by config key, e.g. {temperature: "interval(0, 1.5)"}.
    params: dict[str, str] = field(default_factory=dict)


ConfigStore.instance().store(
    group="hydra/sweeper",
    name="ecdna_optuna",
    node=EcdnaOptunaSweeperConf,
    provider="ecdna_exp",
)
