"""MLflow logging: the local store, one child run per job, and what each run records.

The store lives under ``tracking.dir`` (default ``mlruns/`` in the directory
the command was started from): ``mlflow.db`` (SQLite, the backend store) and
``artifacts/``. ``make ui`` serves it on 127.0.0.1.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from ecdna_exp import plots
from ecdna_exp.data import Dataset
from ecdna_exp.experiment import ExperimentResult

log = logging.getLogger(__name__)

#: Params longer than this many characters go to ``params_long.yaml`` instead.
MAX_PARAM_LENGTH = 500
_INVALID_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /:]")


class TrackingStore:
    """A local MLflow store: SQLite backend plus an artifact folder."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory).expanduser().resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = f"sqlite:///{self.directory / 'mlflow.db'}"
        self.artifact_root = (self.directory / "artifacts").as_uri()
        mlflow.set_tracking_uri(self.tracking_uri)
        self.client = MlflowClient(self.tracking_uri)

    def ensure_experiment(self, name: str) -> str:
        """Return the id of experiment ``name``, creating it with this store's artifact folder."""
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=f"{self.artifact_root}/{name}")
        except mlflow.exceptions.MlflowException:
            # Another process created it between the lookup and the create.
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id


def store_from_config(cfg: DictConfig) -> TrackingStore:
    directory = Path(cfg.tracking.dir)
    if not directory.is_absolute():
        directory = Path(cfg.get("launch_dir") or os.getcwd()) / directory
    return TrackingStore(directory)


def sanitize_key(key: str) -> str:
    """Make ``key`` a valid MLflow param or metric name by replacing other characters with ``_``."""
    return _INVALID_KEY_CHARS.sub("_", key)[:250]


def flatten_config(cfg: DictConfig) -> tuple[dict[str, str], dict[str, str]]:
    """Flatten a resolved config into ``(params, long_params)`` keyed by dotted paths.

    Values longer than :data:`MAX_PARAM_LENGTH`, such as prompt texts, go to
    ``long_params`` so they can be logged as an artifact.
    """
    container = OmegaConf.to_container(cfg, resolve=True)
    params: dict[str, str] = {}
    long_params: dict[str, str] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                visit(f"{prefix}.{key}" if prefix else str(key), child)
            return
        text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
        (long_params if len(text) > MAX_PARAM_LENGTH else params)[sanitize_key(prefix)] = text

    visit("", container)
    return params, long_params


def process_tag() -> str:
    """Return ``host:pid`` of this process, tagged on runs so orphans of killed processes can be found."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_orphaned_runs(client: MlflowClient, experiment_id: str) -> int:
    """Mark RUNNING runs whose process on this host has died as KILLED; returns how many.

    A sweep killed with SIGKILL cannot end its runs. Runs started on another
    host are left alone, because their process cannot be checked from here.
    """
    host = socket.gethostname()
    marked = 0
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        tag = run.data.tags.get("process", "")
        run_host, _, pid = tag.rpartition(":")
        if run_host == host and pid.isdigit() and not _process_alive(int(pid)):
            client.set_terminated(run.info.run_id, status="KILLED")
            marked += 1
    if marked:
        log.warning("marked %d runs of killed processes as KILLED", marked)
    return marked


@contextmanager
def child_run(store: TrackingStore, experiment_id: str, run_name: str, parent_run_id: str | None) -> Iterator:
    """Start an MLflow run that always ends: FINISHED on success, FAILED on any exception."""
    tags = {"process": process_tag()}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags)
    try:
        yield run
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")


def log_config(cfg: DictConfig) -> None:
    params, long_params = flatten_config(cfg)
    mlflow.log_params(params)
    if long_params:
        mlflow.log_text(OmegaConf.to_yaml(OmegaConf.create(long_params)), "params_long.yaml")
    mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")


def log_dataset(dataset: Dataset) -> None:
    frame = dataset.to_frame()
    mlflow.log_text(frame.to_csv(index=False), "dataset.csv")
    mlflow.set_tags({"dataset.name": dataset.name, "dataset.digest": dataset.digest, "dataset.source": dataset.source})
    try:
        # MLflow resolves only known source schemes, so generated data is logged without a source.
        source = dataset.source if Path(dataset.source).exists() else None
        with warnings.catch_warnings():
            # MLflow warns about integer columns and ambiguous local sources; neither applies to a count table.
            warnings.simplefilter("ignore", UserWarning)
            entry = mlflow.data.from_pandas(frame, source=source, name=dataset.name, digest=dataset.digest)
        mlflow.log_input(entry, context="evaluation")
    except Exception as error:  # noqa: BLE001 - the dataset entry is optional; the CSV above has the data.
        log.warning("could not log dataset %s as an MLflow input: %s", dataset.name, error)


def _jsonable(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype(object).where(pd.notna(frame), None)


def _log_figure(figure: plt.Figure, path: str) -> None:
    try:
        mlflow.log_figure(figure, path)
    finally:
        plt.close(figure)


def log_result(result: ExperimentResult, model_name: str) -> None:
    """Log metrics, predictions tables and figures of a finished experiment to the active run."""
    # NaN is logged too: an MAE of NaN means that no answer was parsed.
    mlflow.log_metrics({k: float(v) for k, v in result.metrics.items() if v is not None})
    for trial, trial_metrics in enumerate(result.trial_metrics):
        mlflow.log_metrics({f"trial_{k}": float(v) for k, v in trial_metrics.items()}, step=trial)
    if len(result.trial_metrics) > 1:
        mae_trials = [m["mae"] for m in result.trial_metrics]
        with warnings.catch_warnings():
            # All trials unparsed gives NaN, which is what should be logged.
            warnings.simplefilter("ignore", RuntimeWarning)
            mlflow.log_metrics({"trial_mae_mean": float(np.nanmean(mae_trials)),
                                "trial_mae_best": float(np.nanmin(mae_trials)),
                                "trial_mae_worst": float(np.nanmax(mae_trials))})
    status_counts = result.trial_predictions["parse_status"].value_counts()
    mlflow.log_metrics({f"status_{sanitize_key(str(k))}": float(v) for k, v in status_counts.items()})

    mlflow.log_table(_jsonable(result.predictions), "predictions.json")
    # Quoting every text field keeps carriage returns inside answers from splitting rows.
    mlflow.log_text(result.predictions.to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC), "predictions.csv")
    mlflow.log_text(result.trial_predictions.to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC),
                    "trial_predictions.csv")
    mlflow.log_dict({"example_ids": result.example_ids, "generation": result.generation}, "run_details.json")
    effective = result.generation.get("effective") or {}
    mlflow.log_params({sanitize_key(f"effective_generation.{k}"): str(v) for k, v in effective.items()})

    counts_true = result.predictions["count_true"].to_numpy(float)
    counts_pred = result.predictions["count_pred"].to_numpy(float)
    m = result.metrics
    title = (f"{model_name}: MAE {m['mae']:.2f}, RMSE {m['rmse']:.2f}, r {m['pearson_r']:.2f}, "
             f"coverage {m['coverage']:.0%} of {int(m['n'])}")
    _log_figure(plots.scatter_figure(counts_true, counts_pred, title), "scatter.png")
    _log_figure(plots.residual_histogram(counts_true, counts_pred, title), "residuals.png")


def log_segmentations(segmenter_model, dataset: Dataset, predictions: pd.DataFrame, n_images: int = 8) -> None:
    """Log predicted masks and overlays of the ``n_images`` images with the largest count errors.

    ``segmenter_model`` is a loaded :class:`ecdna_exp.models.segmenter.SegmenterCounter`.
    Masks are saved in the ecSeg colours under ``masks/``, overlays under ``overlays/``.
    """
    from ecdna_exp.ground_truth import CLASS_COLOURS
    from ecdna_exp.models.segmenter import overlay

    palette = np.array([CLASS_COLOURS[k] for k in sorted(CLASS_COLOURS)], dtype=np.uint8)
    errors = (predictions["count_pred"] - predictions["count_true"]).abs().fillna(np.inf)
    worst = predictions.loc[errors.sort_values(ascending=False).index[:n_images], "image_id"]
    samples = {sample.image_id: sample for sample in dataset.samples}
    for image_id in worst:
        try:
            rgb = samples[image_id].load_rgb()
        except ValueError as error:
            log.warning("no overlay for image %s: %s", image_id, error)
            continue
        label_map = segmenter_model.segmenter.predict_label_map(rgb)
        mlflow.log_image(palette[label_map], f"masks/{image_id}.png")
        mlflow.log_image(overlay(rgb, label_map), f"overlays/{image_id}.png")
