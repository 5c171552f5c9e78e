"""One experiment: every evaluated image through the model, parsed and aggregated.

For each batch of images the runner reads each image and runs the prompt's
tool once, and builds the opening messages (few-shot examples, then the query
image). Then, for each trial, it sends every turn of the prompt in order and
parses the last answer. Answers come from the cache
when an identical request was answered before. Every answer is appended to
``predictions.partial.csv`` as soon as its batch finishes, so a crash keeps
what was computed.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ecdna_exp.aggregation import aggregate_trials
from ecdna_exp.cache import AnswerCache, cache_key
from ecdna_exp.data import Dataset, Sample
from ecdna_exp.ground_truth import ECDNA, component_centroids
from ecdna_exp.imaging import ImageLoadError
from ecdna_exp.metrics import count_metrics
from ecdna_exp.models.base import (
    CountingModel,
    GenerationSettings,
    Message,
    ModelConfigError,
    Request,
    Response,
)
from ecdna_exp.parsing import parse_confidence, parse_count
from ecdna_exp.points import localisation_row, localisation_scores, parse_points, strip_points
from ecdna_exp.prompts import PromptSpec, build_opening, continue_conversation, select_examples
from ecdna_exp.tools import ToolOutput

log = logging.getLogger(__name__)

#: ``parse_status`` of rows that have no answer to parse.
IMAGE_ERROR = "image_error"
MODEL_ERROR = "model_error"
#: ``parse_status`` of a point-then-count answer whose count is the number of positions it listed.
POINTS = "points"


@dataclass
class ExperimentSettings:
    """The run-level choices of an experiment, from the top-level config."""

    temperature: float = 0.0
    top_p: float = 0.9
    top_k: int = 50
    max_new_tokens: int = 64
    shots: int = 0
    shot_strategy: str = "cover"
    trials: int = 1
    aggregation: str = "median"
    seed: int = 0
    image_view: str = "rgb"
    bootstrap_resamples: int = 2000
    #: Largest distance in pixels at which a predicted position matches a true ecDNA.
    localisation_radius: float = 6.0


@dataclass
class ExperimentResult:
    """Output of a run: per-trial rows, per-image aggregates and metrics."""

    predictions: pd.DataFrame
    trial_predictions: pd.DataFrame
    metrics: dict[str, float]
    trial_metrics: list[dict[str, float]]
    example_ids: list[str]
    generation: dict[str, Any] = field(default_factory=dict)


def trial_seed(seed: int, trial: int) -> int:
    """Return the sampling seed of one trial, distinct per (seed, trial) pair."""
    return int(np.random.SeedSequence([seed, trial]).generate_state(1)[0])


def _cached_generate(model: CountingModel, requests: list[Request], cache: AnswerCache) -> list[Response]:
    identity = model.describe()
    keys = [cache_key(identity, r.messages, r.settings) for r in requests]
    responses: list[Response | None] = []
    for key in keys:
        responses.append(cache.get(key))
    missing = [i for i, response in enumerate(responses) if response is None]
    if missing:
        fresh = model.generate([requests[i] for i in missing])
        if len(fresh) != len(missing):
            raise RuntimeError(f"model {model.name} returned {len(fresh)} answers for {len(missing)} requests")
        for i, response in zip(missing, fresh):
            responses[i] = response
        cache.put_many([(keys[i], response) for i, response in zip(missing, fresh)])
    return responses


class Experiment:
    """Runs a prompt on a dataset with one model; see the module docstring."""

    def __init__(
        self,
        model: CountingModel,
        dataset: Dataset,
        prompt: PromptSpec,
        settings: ExperimentSettings,
        cache: AnswerCache,
        output_dir: Path,
        tool: Callable[[np.ndarray], ToolOutput] | None = None,
    ):
        self.model = model
        self.dataset = dataset
        self.prompt = prompt
        self.settings = settings
        self.cache = cache
        self.output_dir = Path(output_dir)
        self.tool = tool
        self._partial_path = self.output_dir / "predictions.partial.csv"

    def _examples(self) -> tuple[list[str], list[tuple[np.ndarray, int]]]:
        s = self.settings
        pool = self.dataset.pool
        indices = select_examples([p.count_true for p in pool], s.shots, s.shot_strategy, s.seed)
        chosen: list[Sample] = [pool[i] for i in indices]
        evaluated_ids = {sample.image_id for sample in self.dataset.samples}
        leaked = [c.image_id for c in chosen if c.image_id in evaluated_ids]
        if leaked:
            raise RuntimeError(f"few-shot examples {leaked} are also evaluated images")
        return [c.image_id for c in chosen], [(c.load_rgb(s.image_view), c.count_true) for c in chosen]

    def generation_settings(self, trial: int) -> GenerationSettings:
        s = self.settings
        return GenerationSettings(
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            max_new_tokens=s.max_new_tokens,
            seed=trial_seed(s.seed, trial),
        )

    def _record(self, rows: list[dict[str, Any]]) -> None:
        frame = pd.DataFrame(rows)
        header = not self._partial_path.exists()
        frame.to_csv(self._partial_path, mode="a", header=header, index=False, quoting=csv.QUOTE_NONNUMERIC)

    def _prepare_batch(self, batch: list[Sample], examples) -> dict[str, Any]:
        """Load each image once and build its opening messages, shared by all trials.

        Returns ``{image_id: (opening messages, shape, tool fill)}``, or an
        error message string for an image that failed to load.
        """
        prepared: dict[str, Any] = {}
        for sample in batch:
            try:
                rgb = sample.load_rgb(self.settings.image_view)
            except ImageLoadError as error:
                log.error("image %s failed to load: %s", sample.image_id, error)
                prepared[sample.image_id] = str(error)
                continue
            tool_output = self.tool(rgb) if self.tool else ToolOutput()
            fill = {"height": rgb.shape[0], "width": rgb.shape[1], **tool_output.fill}
            opening = build_opening(self.prompt, rgb, examples, fill, tool_output.images)
            prepared[sample.image_id] = (opening, rgb.shape[:2], tool_output.fill)
        return prepared

    def _run_batch(self, batch: list[Sample], trial: int, prepared: dict[str, Any]) -> list[dict[str, Any]]:
        settings = self.generation_settings(trial)
        rows: dict[str, dict[str, Any]] = {}
        conversations: dict[str, list[Message]] = {}
        shapes: dict[str, tuple[int, int]] = {}
        model_points: dict[str, np.ndarray | None] = {}
        for sample in batch:
            row = {"image_id": sample.image_id, "trial": trial, "count_true": sample.count_true,
                   "answer_text": None, "count_pred": np.nan, "parse_status": None, "confidence": np.nan,
                   "latency_s": 0.0, "error": None}
            rows[sample.image_id] = row
            entry = prepared[sample.image_id]
            if isinstance(entry, str):
                row.update(parse_status=IMAGE_ERROR, error=entry)
                continue
            opening, shapes[sample.image_id], tool_fill = entry
            row.update({f"tool_{k}": v for k, v in tool_fill.items()})
            conversations[sample.image_id] = opening

        for step, turn in enumerate(self.prompt.turns):
            if step > 0:
                conversations = {
                    image_id: continue_conversation(messages, rows[image_id][f"step{step}_answer"], turn)
                    for image_id, messages in conversations.items()
                }
            ids = list(conversations)
            if not ids:
                break
            requests = [Request(image_id, conversations[image_id], settings) for image_id in ids]
            responses = _cached_generate(self.model, requests, self.cache)
            for image_id, response in zip(ids, responses):
                row = rows[image_id]
                row["latency_s"] += response.latency_s
                if not response.ok:
                    log.error("model %s failed on image %s: %s", self.model.name, image_id, response.error)
                    row.update(parse_status=MODEL_ERROR, error=response.error)
                    del conversations[image_id]
                    continue
                if self.prompt.multi_turn:
                    row[f"step{step + 1}_answer"] = response.answer_text
                row["answer_text"] = response.answer_text
                model_points[image_id] = response.points

        by_id = {sample.image_id: sample for sample in batch}
        for image_id in conversations:
            row = rows[image_id]
            answer_text = strip_points(row["answer_text"]) if self.prompt.points else row["answer_text"]
            parsed = parse_count(answer_text)
            row.update(count_pred=parsed.value if parsed.value is not None else np.nan,
                       parse_status=str(parsed.status))
            confidence = parse_confidence(row["answer_text"])
            row["confidence"] = confidence if confidence is not None else np.nan
            self._score_points(row, by_id[image_id], shapes[image_id], model_points.get(image_id))
        return list(rows.values())

    def _score_points(self, row: dict[str, Any], sample: Sample, shape, points: np.ndarray | None) -> None:
        """Add the positions a model gave and, where a label map exists, their localisation counts."""
        if points is None and self.prompt.points:
            points = parse_points(row["answer_text"], shape, self.prompt.points)
            if not np.isfinite(row["count_pred"]) and len(points):
                row.update(count_pred=float(len(points)), parse_status=POINTS)
        if points is None:
            return
        row["n_points"] = len(points)
        label_map = sample.load_label_map()
        if label_map is not None and label_map.shape == tuple(shape):
            centroids_true = component_centroids(label_map == ECDNA)
            row.update(localisation_row(points, centroids_true, self.settings.localisation_radius))

    def run(self) -> ExperimentResult:
        """Answer every evaluated image in every trial and score the answers."""
        s = self.settings
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._partial_path.unlink(missing_ok=True)
        images_per_request = s.shots + 1 + (1 if self.tool else 0)
        limit = self.model.max_images_per_request
        if limit is not None and images_per_request > limit:
            raise ModelConfigError(
                f"each request carries {images_per_request} images (shots={s.shots} plus the query), but model "
                f"{self.model.name} accepts at most {limit}; lower shots or raise the server's image limit"
            )
        example_ids, examples = self._examples()
        samples = self.dataset.samples
        batch_size = max(1, int(self.model.batch_size))
        all_rows: list[dict[str, Any]] = []
        total = s.trials * len(samples)
        with tqdm(total=total, desc=f"{self.model.name}", unit="image", disable=None, mininterval=2.0) as bar:
            for start in range(0, len(samples), batch_size):
                batch = samples[start : start + batch_size]
                prepared = self._prepare_batch(batch, examples)
                for trial in range(s.trials):
                    started = time.perf_counter()
                    rows = self._run_batch(batch, trial, prepared)
                    log.debug("batch of %d, trial %d took %.2f s", len(batch), trial, time.perf_counter() - started)
                    self._record(rows)
                    all_rows.extend(rows)
                    bar.update(len(batch))

        trial_predictions = pd.DataFrame(all_rows).sort_values(["trial"], kind="stable").reset_index(drop=True)
        predictions = aggregate_trials(trial_predictions, s.aggregation)
        metrics = count_metrics(predictions["count_true"].to_numpy(), predictions["count_pred"].to_numpy(),
                                n_resamples=s.bootstrap_resamples, seed=s.seed)
        trial_metrics = []
        for _, frame in trial_predictions.groupby("trial", sort=True):
            trial_metrics.append(count_metrics(frame["count_true"].to_numpy(), frame["count_pred"].to_numpy(),
                                               n_resamples=s.bootstrap_resamples, seed=s.seed))
        if "loc_tp" in trial_predictions:
            totals = trial_predictions[["loc_tp", "loc_fp", "loc_fn"]].fillna(0).sum()
            metrics.update(localisation_scores(int(totals["loc_tp"]), int(totals["loc_fp"]), int(totals["loc_fn"])))
        return ExperimentResult(predictions, trial_predictions, metrics, trial_metrics, example_ids,
                                generation=self.generation_settings(0).to_dict())
