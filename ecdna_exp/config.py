"""Checks of the composed config, so a wrong value fails before any model loads."""

from __future__ import annotations

import secrets

from omegaconf import DictConfig, OmegaConf

from ecdna_exp.aggregation import AGGREGATIONS
from ecdna_exp.prompts import SHOT_STRATEGIES


class ConfigError(ValueError):
    """An invalid value in the composed config."""


def register_resolvers() -> None:
    """Register ``${unique_suffix:}``: a random hex tag, fixed once per process.

    Output folders carry it beside the timestamp, so two sweeps started in
    the same second never share a folder.
    """
    if not OmegaConf.has_resolver("unique_suffix"):
        tag = secrets.token_hex(3)
        OmegaConf.register_new_resolver("unique_suffix", lambda: tag, use_cache=True)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming the first invalid top-level or dataset value."""
    _require(cfg.temperature is not None and float(cfg.temperature) >= 0,
             f"temperature must be >= 0 (0 means greedy decoding), got {cfg.temperature}")
    _require(isinstance(cfg.shots, int) and cfg.shots >= 0, f"shots must be an integer >= 0, got {cfg.shots!r}")
    _require(isinstance(cfg.trials, int) and cfg.trials >= 1, f"trials must be an integer >= 1, got {cfg.trials!r}")
    _require(cfg.aggregation in AGGREGATIONS, f"aggregation must be one of {AGGREGATIONS}, got {cfg.aggregation!r}")
    _require(cfg.shot_strategy in SHOT_STRATEGIES,
             f"shot_strategy must be one of {SHOT_STRATEGIES}, got {cfg.shot_strategy!r}")
    _require(0 < float(cfg.generation.top_p) <= 1, f"generation.top_p must be in (0, 1], got {cfg.generation.top_p}")
    _require(int(cfg.generation.top_k) >= 0, f"generation.top_k must be >= 0 (0 disables it), got {cfg.generation.top_k}")
    _require(int(cfg.generation.max_new_tokens) >= 1,
             f"generation.max_new_tokens must be >= 1, got {cfg.generation.max_new_tokens}")
    dataset = cfg.dataset
    _require(dataset.view in ("rgb", "dapi"), f"dataset.view must be 'rgb' or 'dapi', got {dataset.view!r}")
    limit = dataset.get("limit")
    _require(limit is None or (isinstance(limit, int) and limit >= 1),
             f"dataset.limit must be a positive integer or null, got {limit!r}")
    _require(cfg.shots <= dataset.pool_size,
             f"shots={cfg.shots} needs at least that many pool images, but dataset.pool_size={dataset.pool_size}")
