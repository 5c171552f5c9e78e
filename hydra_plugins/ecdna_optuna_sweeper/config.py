"""Settings of the ``ecdna_optuna`` sweeper, registered in Hydra's ConfigStore.

Hydra imports this module when it scans ``hydra_plugins``, so it stays free
of heavy imports. It also avoids ``from __future__ import annotations``:
Hydra runs the module without adding it to ``sys.modules``, and
``dataclass`` then fails to resolve string annotations.
"""

from dataclasses import dataclass, field
from typing import Dict, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class EcdnaOptunaSweeperConf:
    """Settings of one Optuna search; every field can be overridden as ``hydra.sweeper.<field>``."""

    _target_: str = "hydra_plugins.ecdna_optuna_sweeper.optuna_sweeper.EcdnaOptunaSweeper"

    # Total number of COMPLETE trials the study should reach; a restarted search runs only the rest.
    n_trials: int = 20
    # Trials asked per batch and handed to the launcher together (the launcher decides how many run at once).
    n_jobs: int = 1
    # minimize or maximize the value the task returns.
    direction: str = "minimize"
    # Name of the study in the storage. Runs with the same name and storage continue one study.
    study_name: str = "ecdna-${model.name}"
    # SQLAlchemy URL of the Optuna storage; null is sqlite:///<tracking dir>/optuna.db (absolute path).
    storage: Optional[str] = None
    # Seed of the TPE sampler, combined with the number of trials already in the study.
    seed: int = 0
    # Trials sampled at random before TPE starts modelling the objective.
    n_startup_trials: int = 10
    # Failed trials one invocation tolerates (one more stops the search); null tolerates n_trials of them.
    max_failures: Optional[int] = None
    # Search space as Hydra override values by config key, e.g. {temperature: "interval(0, 1.5)"}.
    params: Dict[str, str] = field(default_factory=dict)


ConfigStore.instance().store(
    group="hydra/sweeper",
    name="ecdna_optuna",
    node=EcdnaOptunaSweeperConf,
    provider="ecdna_exp",
)
