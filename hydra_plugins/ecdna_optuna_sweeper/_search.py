"""The search loop: open or resume the study, ask, launch, tell, report.

Resume rule: only COMPLETE trials count toward ``n_trials``. A trial that
failed (the job raised or returned NaN or infinity) or that an earlier,
killed search left RUNNING is a FAIL trial, so a restarted search runs new
trials until the study contains ``n_trials`` COMPLETE ones. ``max_failures``
is the number of failed trials one invocation tolerates; one more stops
it, so a search whose every trial fails ends instead of running forever.
"""

from __future__ import annotations

import logging
import math
import numbers
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import distribution_to_json
from optuna.trial import TrialState

from hydra_plugins.ecdna_optuna_sweeper._report import report_study
from hydra_plugins.ecdna_optuna_sweeper._space import SearchSpace, format_override, parse_search_space

log = logging.getLogger(__name__)

#: Config key that carries the trial number into each job, so its MLflow run can be matched to the trial.
TRIAL_KEY = "optuna_trial"
#: Maximum length in characters of the error text stored in a failed trial's user attributes.
MAX_ERROR_LENGTH = 2000


def default_storage(config: DictConfig) -> str:
    """Return ``sqlite:///<absolute tracking dir>/optuna.db``, creating the folder."""
    tracking_dir = OmegaConf.select(config, "tracking.dir")
    if tracking_dir is None:
        raise ValueError("the config has no tracking.dir. Set hydra.sweeper.storage to an Optuna storage URL")
    directory = Path(str(tracking_dir)).expanduser()
    if not directory.is_absolute():
        directory = Path(config.hydra.runtime.cwd) / directory
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{directory / 'optuna.db'}"


def _study_fingerprint(config: DictConfig, space: SearchSpace) -> dict[str, Any]:
    """Describe what defines the objective: the search space and the fixed overrides that matter."""
    excluded = set(
        OmegaConf.select(config, "hydra.job.config.override_dirname.exclude_keys", default=[]) or []
    )
    fixed = sorted(
        line for line in space.fixed_overrides if line.split("=", 1)[0].lstrip("+~") not in excluded
    )
    distributions = {name: distribution_to_json(d) for name, d in sorted(space.distributions.items())}
    return {"search_space": distributions, "fixed_overrides": fixed}


def open_study(sweeper, storage_url: str, space: SearchSpace) -> optuna.Study:
    """Load or create the study, check that it matches this search, and fail stale RUNNING trials.

    Raises
    ------
    ValueError
        If the existing study has trials from another direction, search
        space or set of fixed overrides.
    """
    # A long SQLite busy timeout lets two searches on one storage file wait for each other's writes.
    storage = optuna.storages.RDBStorage(storage_url, engine_kwargs={"connect_args": {"timeout": 60}})
    study = optuna.create_study(
        storage=storage, study_name=sweeper.study_name, direction=sweeper.direction, load_if_exists=True
    )
    if study.direction.name.lower() != sweeper.direction:
        raise ValueError(
            f"study {sweeper.study_name!r} in {storage_url} is set to {study.direction.name.lower()}, "
            f"not {sweeper.direction}. Choose another hydra.sweeper.study_name."
        )

    fingerprint = _study_fingerprint(sweeper.config, space)
    if study.trials:
        stored = {key: study.user_attrs.get(key) for key in fingerprint}
        if stored != fingerprint:
            raise ValueError(
                f"study {sweeper.study_name!r} in {storage_url} was run with {stored}, but this search has "
                f"{fingerprint}. Resume it with the same settings or choose another hydra.sweeper.study_name."
            )
    for key, value in fingerprint.items():
        study.set_user_attr(key, value)

    # NOTE: this assumes one search per study at a time, because a second live search would lose
    # its running trials here.
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        log.warning("trial %d was left RUNNING by an interrupted search, so it is marked FAIL", trial.number)
        study.tell(trial.number, state=TrialState.FAIL)

    # Seeding with the trial count as well keeps a resumed search from repeating the first trials' samples.
    seed = int(np.random.SeedSequence([sweeper.seed, len(study.trials)]).generate_state(1)[0])
    study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=sweeper.n_startup_trials)
    return study


def _job_dir(result: JobReturn) -> str | None:
    return OmegaConf.select(result.hydra_cfg, "hydra.runtime.output_dir") if result.hydra_cfg else None


def _trial_value(result: JobReturn) -> tuple[float | None, str | None]:
    """Return ``(value, None)`` for a finite objective or ``(None, reason)`` for a failed trial."""
    try:
        value = result.return_value
    except Exception as error:  # noqa: BLE001 - any error of the job fails only its trial.
        return None, f"job raised {type(error).__name__}: {error}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None, f"job returned {value!r}, not a number"
    if not math.isfinite(float(value)):
        return None, f"job returned {float(value)}; its log is in {_job_dir(result)}"
    return float(value), None


def _count(study: optuna.Study, state: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=(state,)))


def _run_batch(sweeper, study: optuna.Study, space: SearchSpace, size: int) -> int:
    """Launch ``size`` new trials as one batch of jobs; return how many failed."""
    trials = [study.ask(space.distributions) for _ in range(size)]
    batch = []
    for trial in trials:
        overrides = [*space.trial_overrides(trial.params), format_override(f"++{TRIAL_KEY}", trial.number)]
        trial.set_user_attr("overrides", overrides)
        batch.append(overrides)
        log.info("trial %d: %s", trial.number, trial.params)

    failed = 0
    try:
        sweeper.validate_batch_is_legal(batch)
        # Job numbers follow trial numbers, so a resumed search does not reuse an earlier job's folder.
        results = sweeper.launcher.launch(batch, initial_job_idx=trials[0].number)
        for trial, result in zip(trials, results):
            trial.set_user_attr("job_dir", _job_dir(result))
            value, reason = _trial_value(result)
            if value is None:
                failed += 1
                trial.set_user_attr("error", reason[:MAX_ERROR_LENGTH])
                log.warning("trial %d failed: %s", trial.number, reason)
                study.tell(trial, state=TrialState.FAIL)
            else:
                study.tell(trial, value)
                log.info("trial %d: objective %.4f", trial.number, value)
    except BaseException:
        # When the batch is interrupted or cannot be launched, its trials are marked FAIL before the
        # error propagates.
        for trial in trials:
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    return failed


def run_search(sweeper, arguments: list[str]) -> optuna.Study:
    """Run trials until the study contains ``sweeper.n_trials`` COMPLETE ones, then report it.

    ``arguments`` are the task overrides from the command line. They come
    after ``hydra.sweeper.params`` and replace entries with the same key.
    """
    config = sweeper.config
    parser = OverridesParser.create(config_loader=sweeper.hydra_context.config_loader)
    param_overrides = [f"{key}={value}" for key, value in sweeper.params.items()]
    space = parse_search_space([*param_overrides, *arguments], parser)
    if not space.distributions:
        raise ValueError(
            "the search space is empty. Set hydra.sweeper.params or pass a sweep such as "
            "'temperature=interval(0,1)'"
        )

    sweep_dir = Path(config.hydra.sweep.dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, sweep_dir / "multirun.yaml")

    storage_url = sweeper.storage or default_storage(config)
    study = open_study(sweeper, storage_url, space)
    complete = _count(study, TrialState.COMPLETE)
    log.info(
        "study %r in %s: %d of %d trials complete, %d failed before this run",
        study.study_name,
        storage_url,
        complete,
        sweeper.n_trials,
        _count(study, TrialState.FAIL),
    )

    failures = 0
    while complete < sweeper.n_trials and failures <= sweeper.max_failures:
        size = min(sweeper.n_jobs, sweeper.n_trials - complete)
        failures += _run_batch(sweeper, study, space, size)
        complete = _count(study, TrialState.COMPLETE)
    if complete < sweeper.n_trials:
        log.error(
            "stopped after %d failed trials (hydra.sweeper.max_failures=%d) with %d of %d trials complete",
            failures,
            sweeper.max_failures,
            complete,
            sweeper.n_trials,
        )

    report_study(study, config, storage_url, sweep_dir, TRIAL_KEY)
    return study
