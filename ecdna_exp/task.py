"""The Hydra application: ``python -m ecdna_exp [overrides]`` runs one job, ``-m`` a sweep.

One job loads the dataset and model named by the config, runs the
experiment, logs everything to an MLflow run, and returns the objective
(see :func:`ecdna_exp.metrics.objective`) for sweepers to minimise.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from ecdna_exp import tracking
from ecdna_exp.cache import AnswerCache
from ecdna_exp.config import register_resolvers, validate_config
from ecdna_exp.data import load_dataset
from ecdna_exp.experiment import Experiment, ExperimentSettings
from ecdna_exp.models import build_model
from ecdna_exp.prompts import PromptSpec
from ecdna_exp.sweep import read_parent_run_id
from ecdna_exp.tools import make_tool

log = logging.getLogger(__name__)
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")

register_resolvers()
# Artifact transfers are local; their progress bars would only clutter sweep logs.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
logging.getLogger("httpx").setLevel(logging.WARNING)


def settings_from_config(cfg: DictConfig) -> ExperimentSettings:
    return ExperimentSettings(
        temperature=float(cfg.temperature),
        top_p=float(cfg.generation.top_p),
        top_k=int(cfg.generation.top_k),
        max_new_tokens=int(cfg.generation.max_new_tokens),
        shots=int(cfg.shots),
        shot_strategy=str(cfg.shot_strategy),
        trials=int(cfg.trials),
        aggregation=str(cfg.aggregation),
        seed=int(cfg.seed),
        image_view=str(cfg.dataset.view),
        bootstrap_resamples=int(cfg.metrics.bootstrap_resamples),
        localisation_radius=float(cfg.metrics.localisation_radius),
    )


def run_job(cfg: DictConfig, *, run_name: str, parent_run_id: str | None, output_dir: Path) -> float:
    """Run one experiment inside an MLflow run and return its objective."""
    validate_config(cfg)
    store = tracking.store_from_config(cfg)
    experiment_id = store.ensure_experiment(cfg.tracking.experiment)
    cache_path = Path(store.directory) / "cache" / "answers.sqlite" if cfg.cache.enabled else None
    cache = AnswerCache(cache_path)

    with tracking.child_run(store, experiment_id, run_name, parent_run_id) as run:
        log.info("MLflow run %s (%s)", run.info.run_id, run_name)
        tracking.log_config(cfg)
        dataset = load_dataset(cfg.dataset, seed=int(cfg.dataset.split_seed), shots=int(cfg.shots))
        tracking.log_dataset(dataset)
        model = build_model(cfg.model)
        try:
            prompt = PromptSpec.from_config(cfg.prompt)
            experiment = Experiment(model, dataset, prompt, settings_from_config(cfg), cache, output_dir,
                                    tool=make_tool(prompt.tool))
            try:
                result = experiment.run()
            except Exception:
                # Keep the answers finished before the failure with the FAILED run.
                partial = output_dir / "predictions.partial.csv"
                if partial.exists():
                    tracking.mlflow.log_artifact(str(partial))
                raise
            effective = model.effective_generation(experiment.generation_settings(0))
            if effective:
                result.generation["effective"] = effective
        finally:
            model.close()
            cache.close()
        tracking.log_result(result, model.name)
        if model.is_loaded and hasattr(model.loaded, "segmenter"):
            tracking.log_segmentations(model.loaded, dataset, result.predictions)
        tracking.mlflow.log_metrics({"cache_hits": cache.hits, "cache_misses": cache.misses})
        log.info("%s: MAE %.3f, RMSE %.3f, coverage %.1f%% over %d images (cache hits %d, misses %d)",
                 model.name, result.metrics["mae"], result.metrics["rmse"], 100 * result.metrics["coverage"],
                 int(result.metrics["n"]), cache.hits, cache.misses)
        return float(result.metrics["objective"])


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    output_dir = Path(hydra_cfg.runtime.output_dir)
    run_name = hydra_cfg.job.override_dirname or "default"
    parent_run_id = read_parent_run_id(hydra_cfg.sweep.dir) if multirun else None
    with open_dict(cfg):
        cfg.launch_dir = hydra_cfg.runtime.cwd
    try:
        return run_job(cfg, run_name=run_name, parent_run_id=parent_run_id, output_dir=output_dir)
    except Exception:
        if not (multirun and cfg.continue_on_error):
            raise
        # The run is already marked FAILED; the sweep goes on to its next job.
        log.exception("job %r failed; continuing with the next job of the sweep", run_name)
        return math.nan


if __name__ == "__main__":
    main()
