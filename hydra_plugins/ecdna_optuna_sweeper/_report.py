"""Records of a finished search: the trials table, the history figure and the best trial.

Everything goes to the MLflow parent run of the multirun (its id is in
``<sweep dir>/mlflow_parent_run_id``, written by
``ecdna_exp.sweep.MlflowSweepCallback``) and the best trial also to
``<sweep dir>/optuna_best.yaml``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

log = logging.getLogger(__name__)

_TRIAL_COLUMNS = (
    "number",
    "state",
    "value",
    "params",
    "user_attrs",
    "datetime_start",
    "datetime_complete",
    "duration",
)


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """Return one row per trial: number, state, value, ``params_*``, ``user_attrs_*`` and times."""
    frame = study.trials_dataframe(attrs=_TRIAL_COLUMNS)
    if "duration" in frame:
        frame["duration_s"] = frame.pop("duration").dt.total_seconds()
    if "user_attrs_overrides" in frame:
        # One command-line string per trial, ready to paste after `python -m ecdna_exp`.
        frame["user_attrs_overrides"] = frame["user_attrs_overrides"].map(
            lambda overrides: " ".join(overrides) if isinstance(overrides, list) else overrides
        )
    return frame


def history_figure(study: optuna.Study) -> Figure:
    """Plot the objective of each COMPLETE trial and the best value so far, by trial number.

    Failed trials are marked with a red x on the lower edge of the axes.
    """
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t.number for t in trials if t.state == TrialState.FAIL]
    numbers = np.array([t.number for t in complete])
    values = np.array([t.value for t in complete], dtype=float)
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    best_so_far = np.maximum.accumulate(values) if maximize else np.minimum.accumulate(values)

    figure, axes = plt.subplots(figsize=(7, 4))
    if len(values):
        axes.plot(numbers, values, "o", color="tab:blue", label="objective of trial")
        axes.step(numbers, best_so_far, where="post", color="tab:orange", label="best so far")
    if failed:
        axes.plot(
            failed,
            np.zeros(len(failed)),
            "x",
            color="tab:red",
            clip_on=False,
            transform=axes.get_xaxis_transform(),
            label="failed trial",
        )
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("trial number")
    axes.set_ylabel("objective")
    axes.set_title(f"{study.study_name}: {len(complete)} complete, {len(failed)} failed")
    axes.legend(loc="best")
    figure.tight_layout()
    return figure


def _best(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:
        return None


def _mlflow_run_ids(client, parent_run_id: str, experiment_ids: list[str], trial_key: str) -> dict[int, str]:
    """Map trial numbers to the child runs of ``parent_run_id`` that carry them as a param."""
    runs = client.search_runs(
        experiment_ids, f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=5000
    )
    mapping = {}
    for run in runs:
        number = run.data.params.get(trial_key)
        if number is not None:
            mapping[int(number)] = run.info.run_id
    return mapping


def _log_to_parent(
    study: optuna.Study,
    config: DictConfig,
    storage_url: str,
    parent_run_id: str,
    table: pd.DataFrame,
    trial_key: str,
) -> None:
    from ecdna_exp.tracking import store_from_config

    client = store_from_config(config).client
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    run_ids = _mlflow_run_ids(client, parent_run_id, [experiment_id], trial_key)
    table = table.assign(mlflow_run_id=table["number"].map(run_ids))
    client.log_text(parent_run_id, table.to_csv(index=False), "optuna/trials.csv")
    figure = history_figure(study)
    try:
        client.log_figure(parent_run_id, figure, "optuna/history.png")
    finally:
        plt.close(figure)

    client.set_tag(parent_run_id, "optuna.study", study.study_name)
    client.set_tag(parent_run_id, "optuna.storage", storage_url)
    counts = {state: sum(t.state == state for t in study.get_trials(deepcopy=False)) for state in TrialState}
    client.log_metric(parent_run_id, "optuna_trials_complete", counts[TrialState.COMPLETE])
    client.log_metric(parent_run_id, "optuna_trials_failed", counts[TrialState.FAIL])
    best = _best(study)
    if best is not None:
        client.log_metric(parent_run_id, "best_objective", float(best.value))
        client.log_metric(parent_run_id, "best_trial", best.number)
        for name, value in best.params.items():
            client.log_param(parent_run_id, f"best.{name}", value)


def report_study(
    study: optuna.Study, config: DictConfig, storage_url: str, sweep_dir: Path, trial_key: str
) -> dict[str, Any]:
    """Log the trials and the best trial to the parent run and the log, and write ``optuna_best.yaml``.

    Returns
    -------
    dict
        ``study``, ``storage``, ``best_value``, ``best_params`` and
        ``best_trial`` (both best entries None when no trial is COMPLETE).
    """
    best = _best(study)
    summary: dict[str, Any] = {
        "study": study.study_name,
        "storage": storage_url,
        "best_trial": best.number if best else None,
        "best_value": float(best.value) if best else None,
        "best_params": dict(best.params) if best else None,
        "best_overrides": best.user_attrs.get("overrides") if best else None,
    }
    OmegaConf.save(OmegaConf.create(summary), sweep_dir / "optuna_best.yaml")
    if best is None:
        log.warning("study %r has no COMPLETE trial, so there is no best trial", study.study_name)
    else:
        log.info(
            "best trial %d of study %r: objective %.4f with %s",
            best.number,
            study.study_name,
            best.value,
            best.params,
        )

    from ecdna_exp.sweep import read_parent_run_id

    parent_run_id = read_parent_run_id(sweep_dir)
    if parent_run_id is None:
        log.warning("no MLflow parent run id found in %s, so the study is not logged to MLflow", sweep_dir)
        return summary
    _log_to_parent(study, config, storage_url, parent_run_id, trials_table(study), trial_key)
    log.info("logged the study's history to MLflow parent run %s", parent_run_id)
    return summary
