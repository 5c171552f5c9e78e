"""The ``ecdna_optuna`` Hydra sweeper class.

Hydra imports this module on every start while it scans for plugins, so
Optuna, MLflow and matplotlib are imported only when a search runs.
"""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


class EcdnaOptunaSweeper(Sweeper):
    """Run an Optuna study whose trials are Hydra jobs.

    The settings are those of :class:`.config.EcdnaOptunaSweeperConf`.
    """

    def __init__(
        self,
        n_trials: int,
        n_jobs: int,
        direction: str,
        study_name: str,
        storage: str | None,
        seed: int,
        n_startup_trials: int,
        max_failures: int | None,
        params: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        if n_trials < 1:
            raise ValueError(f"hydra.sweeper.n_trials must be >= 1, got {n_trials}")
        if n_jobs < 1:
            raise ValueError(f"hydra.sweeper.n_jobs must be >= 1, got {n_jobs}")
        if direction not in ("minimize", "maximize"):
            raise ValueError(f"hydra.sweeper.direction must be 'minimize' or 'maximize', got {direction!r}")
        if max_failures is not None and max_failures < 0:
            raise ValueError(f"hydra.sweeper.max_failures must be >= 0 or null, got {max_failures}")
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.direction = direction
        self.study_name = study_name
        self.storage = storage
        self.seed = seed
        self.n_startup_trials = n_startup_trials
        self.max_failures = n_trials if max_failures is None else max_failures
        if isinstance(params, DictConfig):
            params = OmegaConf.to_container(params, resolve=True)
        self.params: dict[str, str] = {str(key): str(value) for key, value in (params or {}).items()}

        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        """Run trials until the study contains ``n_trials`` COMPLETE ones, and return the study."""
        from hydra_plugins.ecdna_optuna_sweeper._search import run_search

        return run_search(self, arguments)
