"""Counting models: baselines, transformers VLMs, OpenAI-compatible servers and the segmenter."""

from __future__ import annotations

import logging
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ecdna_exp.models.base import CountingModel, ModelConfigError, Request, Response

log = logging.getLogger(__name__)

#: Model config keys that change speed or transport but not the answers; left out of cache keys.
OPERATIONAL_KEYS = frozenset(
    {"batch_size", "device_map", "max_concurrency", "timeout_s", "max_retries", "backoff_s", "max_wait_s",
     "api_key_env"}
)


def instantiate_model(cfg: DictConfig) -> CountingModel:
    """Instantiate the model of the ``model`` config group now.

    Raises
    ------
    ModelConfigError
        If the config has no ``_target_`` or the model cannot be built; the
        message names the model and the cause.
    """
    if "_target_" not in cfg:
        raise ModelConfigError(f"model config {cfg.get('name', '?')!r} has no _target_ class")
    try:
        model = instantiate(cfg, _convert_="all")
    except InstantiationException as error:
        cause = error.__cause__ or error
        if isinstance(cause, ModelConfigError):
            raise cause from None
        raise ModelConfigError(f"cannot build model {cfg.get('name', '?')!r}: {cause}") from cause
    if not isinstance(model, CountingModel):
        raise ModelConfigError(f"model {cfg.get('name', '?')!r} is a {type(model).__name__}, not a CountingModel")
    return model


class LazyModel(CountingModel):
    """A model that is built on its first request.

    A sweep served entirely from the answer cache then never loads weights.
    The identity used for cache keys is the model config without
    :data:`OPERATIONAL_KEYS`, known before loading. Other attributes are
    looked up on the built model.
    """

    def __init__(self, cfg: DictConfig):
        self._cfg = cfg
        self._model: CountingModel | None = None
        self.name = str(cfg.get("name", "model"))
        self.batch_size = int(cfg.get("batch_size", 1))
        self.max_images_per_request = cfg.get("max_images_per_request")
        container = OmegaConf.to_container(cfg, resolve=True)
        self._identity = {k: v for k, v in container.items() if k not in OPERATIONAL_KEYS}

    @property
    def is_loaded(self) -> bool:
        return self._model is not None

    def effective_generation(self, settings) -> dict[str, Any] | None:
        """Return the decoding arguments the backend actually used, if it was loaded and reports them."""
        if self._model is None:
            return None
        if hasattr(self._model, "payload_settings"):
            return self._model.payload_settings(settings)
        kwargs = getattr(self._model, "last_generate_kwargs", None)
        return dict(kwargs) if kwargs else None

    @property
    def loaded(self) -> CountingModel:
        if self._model is None:
            log.info("building model %s", self.name)
            self._model = instantiate_model(self._cfg)
        return self._model

    def generate(self, requests: list[Request]) -> list[Response]:
        return self.loaded.generate(requests)

    def describe(self) -> dict[str, Any]:
        return dict(self._identity)

    def close(self) -> None:
        if self._model is not None:
            self._model.close()

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("_"):
            raise AttributeError(attribute)
        return getattr(self.loaded, attribute)


def build_model(cfg: DictConfig, *, lazy: bool = True) -> CountingModel:
    """Build the model of the ``model`` config group; ``lazy`` defers loading to the first request."""
    return LazyModel(cfg) if lazy else instantiate_model(cfg)
