"""The parent run of a multirun and its comparison of the child runs.

:class:`MlflowSweepCallback` is a Hydra callback. At the start of a multirun
it creates the MLflow experiment and a parent run, and writes the parent's id
to ``<sweep dir>/mlflow_parent_run_id`` so that jobs in any launcher process
attach to it. The experiment and database exist before any worker starts,
so parallel workers never race to create them. After each job and at the end
it logs the comparison of the finished children to the parent.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ecdna_exp import plots
from ecdna_exp.metrics import paired_bootstrap_not_worse

log = logging.getLogger(__name__)

PARENT_ID_FILE = "mlflow_parent_run_id"


def read_parent_run_id(sweep_dir: str | Path) -> str | None:
    path = Path(sweep_dir) / PARENT_ID_FILE
    return path.read_text().strip() if path.exists() else None


def _child_label(run) -> str:
    return run.data.tags.get("mlflow.runName") or run.info.run_id[:8]


def _load_predictions(client, run_id: str) -> pd.DataFrame | None:
    try:
        local = client.download_artifacts(run_id, "predictions.csv")
    except Exception as error:  # noqa: BLE001 - a child without predictions is left out of the paired test.
        log.warning("no predictions for run %s: %s", run_id, error)
        return None
    return pd.read_csv(local)


def summarise_children(client, experiment_id: str, parent_run_id: str) -> pd.DataFrame:
    """Build one row per child run with its overrides, status and metrics."""
    runs = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=5000)
    rows = []
    for run in sorted(runs, key=lambda r: r.info.start_time):
        row: dict[str, Any] = {"label": _child_label(run), "run_id": run.info.run_id, "status": run.info.status}
        for key in ("mae", "rmse", "mae_ci_low", "mae_ci_high", "rmse_ci_low", "rmse_ci_high",
                    "bias", "pearson_r", "spearman_rho", "coverage", "skill", "objective", "n"):
            row[key] = run.data.metrics.get(key, np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def _paired_test(summary: pd.DataFrame, predictions_by_run: dict[str, pd.DataFrame]) -> dict[str, bool]:
    """Run the paired bootstrap on the finished children, over the images they all evaluated."""
    per_run = {}
    for _, row in summary[summary["status"] == "FINISHED"].iterrows():
        predictions = predictions_by_run.get(row["run_id"])
        if predictions is not None:
            per_run[row["label"]] = predictions.set_index("image_id")
    if len(per_run) < 2:
        return {}
    common = sorted(set.intersection(*(set(frame.index) for frame in per_run.values())))
    if not common:
        log.warning("the children share no evaluated image; the paired comparison is skipped")
        return {}
    errors = {}
    for label, frame in per_run.items():
        frame = frame.loc[common]
        true = frame["count_true"].to_numpy(float)
        pred = frame["count_pred"].to_numpy(float)
        penalty = np.abs(true - np.median(true)) + 1.0
        errors[label] = np.where(np.isfinite(pred), np.abs(pred - true), penalty)
    return paired_bootstrap_not_worse(errors)["not_worse"]


def log_sweep_summary(client, experiment_id: str, parent_run_id: str) -> pd.DataFrame:
    """Log the comparison table and figures of the finished children to the parent run."""
    summary = summarise_children(client, experiment_id, parent_run_id)
    if summary.empty:
        return summary
    finished = summary[summary["status"] == "FINISHED"]
    predictions_by_run = {}
    for run_id in finished["run_id"]:
        predictions = _load_predictions(client, run_id)
        if predictions is not None:
            predictions_by_run[run_id] = predictions
    not_worse = _paired_test(summary, predictions_by_run)
    summary["not_worse_than_best"] = summary["label"].map(not_worse)
    client.log_text(parent_run_id, summary.to_csv(index=False), "comparison.csv")
    client.log_text(parent_run_id, summary.to_markdown(index=False) if _has_tabulate() else summary.to_string(),
                    "comparison.txt")

    if not finished.empty:
        figure = plots.error_bars_figure(finished)
        try:
            client.log_figure(parent_run_id, figure, "mae_rmse.png")
        finally:
            plt.close(figure)
        panels = []
        for _, row in finished.iterrows():
            predictions = predictions_by_run.get(row["run_id"])
            if predictions is not None:
                title = f"{row['label']} (MAE {row['mae']:.2f}, coverage {row['coverage']:.0%})"
                panels.append((title, predictions["count_true"].to_numpy(float),
                               predictions["count_pred"].to_numpy(float)))
        if panels:
            figure = plots.scatter_grid(panels)
            try:
                client.log_figure(parent_run_id, figure, "scatter_grid.png")
            finally:
                plt.close(figure)
        best = finished.loc[finished["mae"].idxmin()] if finished["mae"].notna().any() else None
        if best is not None:
            client.log_metric(parent_run_id, "best_mae", float(best["mae"]))
            client.set_tag(parent_run_id, "best_child", best["label"])
    client.set_tag(parent_run_id, "children_failed", str(int((summary["status"] == "FAILED").sum())))
    return summary


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def format_summary(summary: pd.DataFrame) -> str:
    """Render the comparison table for the terminal."""
    columns = ["label", "status", "n", "coverage", "mae", "mae_ci_low", "mae_ci_high", "rmse", "pearson_r", "skill",
               "not_worse_than_best"]
    columns = [c for c in columns if c in summary.columns]
    buffer = io.StringIO()
    summary[columns].to_string(buffer, index=False, float_format=lambda v: f"{v:.3f}")
    return buffer.getvalue()


class MlflowSweepCallback(Callback):
    """Hydra callback that owns the parent run of a multirun; see the module docstring."""

    def __init__(self, print_summary: bool = True):
        self.print_summary = print_summary
        self._parent_run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from ecdna_exp.tracking import mark_orphaned_runs, process_tag, store_from_config

        store = store_from_config(config)
        experiment_id = store.ensure_experiment(config.tracking.experiment)
        mark_orphaned_runs(store.client, experiment_id)
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        run = store.client.create_run(experiment_id, run_name=f"sweep {sweep_dir.name}",
                                      tags={"sweep_dir": str(sweep_dir.resolve()), "role": "sweep",
                                            "process": process_tag()})
        self._parent_run_id = run.info.run_id
        (sweep_dir / PARENT_ID_FILE).write_text(run.info.run_id)
        log.info("MLflow parent run %s in experiment %r", run.info.run_id, config.tracking.experiment)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from ecdna_exp.tracking import store_from_config

        parent_run_id = self._parent_run_id or read_parent_run_id(config.hydra.sweep.dir)
        if parent_run_id is None:
            return
        store = store_from_config(config)
        experiment_id = store.ensure_experiment(config.tracking.experiment)
        try:
            summary = log_sweep_summary(store.client, experiment_id, parent_run_id)
        finally:
            store.client.set_terminated(parent_run_id, status="FINISHED")
        if self.print_summary and not summary.empty:
            print(f"\nResults ({len(summary)} runs, parent run {parent_run_id}):")
            print(format_summary(summary))
            print(f"\nOpen them in MLflow: `make ui`, or mlflow ui --backend-store-uri {store.tracking_uri} "
                  "--host 127.0.0.1 --port 5000")
