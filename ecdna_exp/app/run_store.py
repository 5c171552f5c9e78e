"""Reading finished runs from the local MLflow store: metrics, figures, predictions and their images."""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from PIL import Image

from ecdna_exp.data import IMAGE_DIRS, load_synthetic
from ecdna_exp.imaging import ImageLoadError, load_image

log = logging.getLogger(__name__)

#: Metrics listed first in the metrics table; the rest follow in name order.
MAIN_METRICS = ("n", "mae", "rmse", "bias", "pearson_r", "spearman_rho", "coverage", "skill", "objective")
PREDICTION_COLUMNS = ["image_id", "count_true", "count_pred", "abs_error", "parse_status", "answer_text"]
_SYNTHETIC_ID = re.compile(r"synthetic-(\d+)$")


class RunReadError(ValueError):
    """A store, run or artifact that cannot be shown. The message names the next step."""


@dataclass
class RunView:
    """One run as the Browse tab shows it.

    ``predictions`` has :data:`PREDICTION_COLUMNS` first, then the other
    columns of ``predictions.csv``, sorted by ``abs_error`` with the largest
    first and unparsed answers (NaN error) last. It is None for a run
    without ``predictions.csv``; ``notes`` then says why. ``scatter`` is an
    ``(H, W, 3)`` uint8 picture of the run's scatter plot, or None.
    """

    run_id: str
    run_name: str
    metrics: pd.DataFrame
    predictions: pd.DataFrame | None = None
    scatter: np.ndarray | None = None
    image_paths: dict[str, str] = field(default_factory=dict)
    source: str | None = None
    config: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def sort_by_error(predictions: pd.DataFrame) -> pd.DataFrame:
    """Add ``abs_error = |count_pred - count_true|`` and sort by it, largest first and NaN last."""
    frame = predictions.copy()
    frame["abs_error"] = (frame["count_pred"] - frame["count_true"]).abs()
    frame = frame.sort_values("abs_error", ascending=False, na_position="last", kind="stable")
    rest = [c for c in frame.columns if c not in PREDICTION_COLUMNS]
    return frame[[c for c in PREDICTION_COLUMNS if c in frame.columns] + rest].reset_index(drop=True)


def read_predictions(path: Path) -> pd.DataFrame:
    """Read a run's ``predictions.csv``, keeping ids and answers as text ("044" stays "044", not 44)."""
    columns = pd.read_csv(path, nrows=0).columns
    text_columns = [c for c in columns if c in ("image_id", "answer_text", "parse_status", "error")
                    or (c.startswith("step") and c.endswith("_answer"))]
    return pd.read_csv(path, dtype={c: str for c in text_columns})


class RunStore:
    """A read-only view of the MLflow store that ``python -m ecdna_exp`` writes under ``tracking.dir``."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory).expanduser().resolve()
        self._client: MlflowClient | None = None
        self._downloads = Path(tempfile.mkdtemp(prefix="ecdna-app-"))

    @property
    def client(self) -> MlflowClient:
        database = self.directory / "mlflow.db"
        if not database.exists():
            raise RunReadError(f"no MLflow store at {self.directory} (mlflow.db not found); run "
                               "`python -m ecdna_exp` first or start the app with --tracking-dir")
        if self._client is None:
            # The same SQLite URI that ecdna_exp.tracking.TrackingStore writes to.
            self._client = MlflowClient(f"sqlite:///{database}")
        return self._client

    def experiments(self) -> list[tuple[str, str]]:
        """Return ``(name, experiment_id)`` of experiments with runs, most recently updated first."""
        found = self.client.search_experiments()
        found = [e for e in found if self.client.search_runs([e.experiment_id], max_results=1)]
        found.sort(key=lambda e: e.last_update_time or 0, reverse=True)
        return [(e.name, e.experiment_id) for e in found]

    def runs(self, experiment_id: str) -> list[tuple[str, str]]:
        """Return ``(label, run_id)`` of an experiment's runs, newest first.

        A label reads ``2026-12-04 20:22 <run name> (FINISHED, MAE 3.00)``.
        """
        runs = self.client.search_runs([experiment_id], order_by=["attributes.start_time DESC"],
                                       max_results=5000)
        choices = []
        for run in runs:
            started = datetime.fromtimestamp(run.info.start_time / 1000).strftime("%Y-%m-%d %H:%M")
            details = [run.info.status]
            if "mae" in run.data.metrics:
                details.append(f"MAE {run.data.metrics['mae']:.2f}")
            elif "mlflow.parentRunId" not in run.data.tags:
                details.append("sweep parent")
            choices.append((f"{started} {run.info.run_name} ({', '.join(details)})", run.info.run_id))
        return choices

    def _artifact(self, run_id: str, path: str) -> Path | None:
        names = {artifact.path for artifact in self.client.list_artifacts(run_id)}
        if path not in names:
            return None
        return Path(self.client.download_artifacts(run_id, path, dst_path=str(self._downloads / run_id)))

    def load_run(self, run_id: str) -> RunView:
        """Read a run's metrics, scatter plot, predictions and image paths.

        Raises
        ------
        RunReadError
            If there is no store under the directory.
        mlflow.exceptions.MlflowException
            If the run is not found or its artifacts cannot be read.
        """
        run = self.client.get_run(run_id)
        names = sorted(run.data.metrics, key=lambda name: (
            MAIN_METRICS.index(name) if name in MAIN_METRICS else len(MAIN_METRICS), name))
        values = [float(f"{run.data.metrics[name]:.4g}") for name in names]
        metrics = pd.DataFrame({"metric": names, "value": values})
        view = RunView(run_id, run.info.run_name or run_id, metrics,
                       source=run.data.tags.get("dataset.source"))

        scatter_path = self._artifact(run_id, "scatter.png") or self._artifact(run_id, "scatter_grid.png")
        if scatter_path is not None:
            with Image.open(scatter_path) as picture:
                view.scatter = np.asarray(picture.convert("RGB"))
        config_path = self._artifact(run_id, "config.yaml")
        if config_path is not None:
            view.config = OmegaConf.to_container(OmegaConf.load(config_path), resolve=False)

        predictions_path = self._artifact(run_id, "predictions.csv")
        if predictions_path is None:
            children = self.client.search_runs([run.info.experiment_id],
                                               f"tags.mlflow.parentRunId = '{run_id}'", max_results=1)
            view.notes.append("This is a sweep parent run; pick one of its child runs to see predictions."
                              if children else f"Run {view.run_name} has no predictions.csv (status "
                              f"{run.info.status}); it may have failed before logging them.")
            return view
        view.predictions = sort_by_error(read_predictions(predictions_path))
        dataset_path = self._artifact(run_id, "dataset.csv")
        if dataset_path is not None:
            dataset = pd.read_csv(dataset_path, dtype={"image_id": str, "path": str}, keep_default_na=False)
            view.image_paths = dict(zip(dataset["image_id"], dataset["path"], strict=True))
        return view


def load_run_image(view: RunView, image_id: str, dataset_root: Path | None) -> np.ndarray:
    """Load the image of one prediction of a run as ``(H, W, 3)`` uint8.

    The image is looked for, in order, at the path in the run's
    ``dataset.csv`` if it is absolute, under the run's dataset source
    folder, under ``dataset_root``, and at the recorded path relative to the
    working directory. Synthetic patches are drawn again from their seed.

    Raises
    ------
    ImageLoadError
        If the image is not found or cannot be read.
    """
    synthetic = _SYNTHETIC_ID.match(image_id)
    if synthetic and (view.source or "").startswith("synthetic://"):
        dataset_cfg = view.config.get("dataset", {})
        sample = load_synthetic(1, seed=int(synthetic.group(1)), size=int(dataset_cfg.get("size", 256)),
                                style=dataset_cfg.get("style"))[0]
        return sample.rgb

    recorded = Path(view.image_paths.get(image_id) or f"{image_id}.tif")
    candidates = [recorded] if recorded.is_absolute() else []
    for root in (Path(view.source) if view.source else None, dataset_root):
        if root is not None:
            candidates += [root / folder / recorded.name for folder in IMAGE_DIRS]
    candidates.append(recorded)
    for candidate in candidates:
        if candidate.is_file():
            return load_image(candidate)
    raise ImageLoadError(f"image {image_id} of run {view.run_name} not found; looked at "
                         f"{', '.join(str(c) for c in candidates)}")
