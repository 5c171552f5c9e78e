"""Counting models: baselines, transformers VLMs, OpenAI-compatible servers and the segmenter."""

from __future__ import annotations

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from ecdna_exp.models.base import CountingModel, ModelConfigError


def build_model(cfg: DictConfig) -> CountingModel:
    """Instantiate the model of the ``model`` config group.

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
