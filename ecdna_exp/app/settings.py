"""Config names, composed configs, the dataset folder and built models, as the app reads them."""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from ecdna_exp.config import register_resolvers
from ecdna_exp.data import Sample, load_ecseg_folder
from ecdna_exp.models import build_model
from ecdna_exp.models.base import CountingModel
from ecdna_exp.tools import ToolOutput, make_tool

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"

#: Dataset folder used when ``--dataset-root`` is not given, relative to the working directory.
DEFAULT_DATASET_ROOT = Path("../shared/data/ecseg_sample")

# Hydra keeps its compose state in a process-wide singleton, so one compose runs at a time.
_COMPOSE_LOCK = threading.Lock()


@dataclass
class AppSettings:
    """Folders the app reads.

    ``dataset_root`` is an ecSeg-style folder of patches, or None when there
    is none. ``tracking_dir`` is the MLflow store written by ``python -m
    ecdna_exp``. ``checkpoint_dir`` is passed to model configs as the
    top-level ``checkpoint_dir`` setting.
    """

    dataset_root: Path | None = None
    tracking_dir: Path = Path("mlruns")
    checkpoint_dir: Path | None = None


def config_names(group: str) -> list[str]:
    """Return the sorted option names of a config group, e.g. ``["classical", "constant", ...]``."""
    return sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))


def compose_config(settings: AppSettings, overrides: list[str]) -> DictConfig:
    """Compose the top-level config with ``overrides``, as ``python -m ecdna_exp`` would.

    Raises
    ------
    hydra.errors.HydraException
        If an override names a missing option or has an invalid value.
    """
    register_resolvers()
    overrides = list(overrides)
    if settings.checkpoint_dir is not None:
        overrides.append(f"checkpoint_dir={Path(settings.checkpoint_dir).resolve()}")
    with _COMPOSE_LOCK, hydra.initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra.compose("config", overrides=overrides)


class DatasetIndex:
    """The patches of the dataset folder, listed on first use and kept.

    An empty index stands for "no dataset folder", so callers need no None checks.
    """

    def __init__(self, root: Path | None):
        self.root = Path(root) if root is not None else None
        self._samples: dict[str, Sample] | None = None
        self._lock = threading.Lock()

    @property
    def samples(self) -> dict[str, Sample]:
        """Samples by image id, in image-id order; empty when there is no folder or it cannot be read."""
        with self._lock:
            if self._samples is None:
                self._samples = self._load()
            return self._samples

    def _load(self) -> dict[str, Sample]:
        if self.root is None:
            return {}
        try:
            samples = load_ecseg_folder(self.root)
        except (OSError, ValueError) as error:
            log.error("cannot list the dataset folder %s: %s", self.root, error)
            return {}
        log.info("dataset folder %s: %d patches", self.root, len(samples))
        return {sample.image_id: sample for sample in samples}

    def match_file(self, path: Path) -> Sample | None:
        """Return the sample whose image file has the same name stem and the same bytes as ``path``.

        An upload that is a copy of a dataset patch then gets that patch's
        ground truth. A different file under the same name gets none.
        """
        sample = self.samples.get(Path(path).stem)
        if sample is None or sample.path is None:
            return None
        try:
            same = sample.path.read_bytes() == Path(path).read_bytes()
        except OSError as error:
            log.warning("cannot compare %s with dataset image %s: %s", path, sample.path, error)
            return None
        return sample if same else None


class ModelCache:
    """Built models and prompt tools kept between requests, models keyed by their resolved config.

    At most ``max_models`` stay loaded. Building another one first closes the
    least recently used, which bounds the memory that large VLMs take.
    """

    def __init__(self, max_models: int = 2):
        self.max_models = max_models
        self._models: OrderedDict[str, CountingModel] = OrderedDict()
        self._lock = threading.Lock()
        self._tools: dict[str, Callable[[np.ndarray], ToolOutput]] = {}
        self.builds = 0

    @staticmethod
    def key(model_cfg: DictConfig) -> str:
        return json.dumps(OmegaConf.to_container(model_cfg, resolve=True), sort_keys=True, default=str)

    def get(self, model_cfg: DictConfig) -> CountingModel:
        """Return the model for ``model_cfg``, building it and loading its weights on a cache miss.

        Raises
        ------
        ModelConfigError
            If the model cannot be built.
        """
        key = self.key(model_cfg)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            while len(self._models) >= self.max_models:
                _, evicted = self._models.popitem(last=False)
                log.info("closing model %s to make room", evicted.name)
                evicted.close()
            model = build_model(model_cfg, lazy=False)
            self._models[key] = model
            self.builds += 1
            return model

    def tool(self, name: str) -> Callable[[np.ndarray], ToolOutput]:
        """Return the prompt tool called ``name`` (see :mod:`ecdna_exp.tools`), loading it once."""
        with self._lock:
            if name not in self._tools:
                self._tools[name] = make_tool(name)
            return self._tools[name]

    def close(self) -> None:
        with self._lock:
            self._tools.clear()
            for model in self._models.values():
                model.close()
            self._models.clear()
