"""Decoding settings, seeding, the context-length check and fault detection for transformers models."""

from __future__ import annotations

import logging
import zlib
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor

from ecdna_exp.models.base import GenerationSettings, ModelConfigError

log = logging.getLogger(__name__)

#: Values of ``model_max_length`` at or above this are placeholders, not a real limit.
_UNSET_MODEL_MAX_LENGTH = 10**8

#: Generation-config fields kept from a checkpoint: token ids only, never decoding choices.
_TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")

#: Decoding fields a checkpoint may set. They are dropped and logged.
_DECODING_FIELDS = (
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "typical_p",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "num_beams",
    "length_penalty",
    "max_length",
    "max_new_tokens",
)


class NonFiniteLogitsError(RuntimeError):
    """Logits containing NaN or +inf, which make every later token meaningless."""


class NonFiniteLogitsCheck(LogitsProcessor):
    """Raise :class:`NonFiniteLogitsError` when a decoding step produces NaN or +inf logits.

    Greedy decoding would otherwise turn NaN logits into an arbitrary token
    without any error. -inf is allowed because models mask tokens with it.
    """

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if bool(torch.isnan(scores).any() | torch.isposinf(scores).any()):
            raise NonFiniteLogitsError("probability tensor contains either `inf`, `nan` or element < 0")
        return scores


def is_recoverable_fault(error: BaseException) -> bool:
    """Return True for faults that may concern one request of a batch: CUDA out of memory or NaN/inf logits."""
    if isinstance(error, (torch.cuda.OutOfMemoryError, NonFiniteLogitsError)):
        return True
    return isinstance(error, RuntimeError) and "probability tensor contains" in str(error)


def neutral_generation_config(checkpoint_config: GenerationConfig | None) -> tuple[GenerationConfig, dict]:
    """Build a generation config that keeps only the token ids of the checkpoint's one.

    ``generate()`` (transformers 5) fills every field left None in the config it
    receives from ``model.generation_config``. Checkpoints ship sampling
    defaults there, for example ``top_k=1``, which turns sampling greedy, or a
    ``repetition_penalty``, so a model keeping them would decode differently
    from the request's settings.

    Returns
    -------
    tuple of (GenerationConfig, dict)
        The neutral config, and the checkpoint's dropped decoding fields for logging.
    """
    token_ids = {}
    dropped = {}
    if checkpoint_config is not None:
        for key, value in checkpoint_config.to_diff_dict().items():
            if key in _TOKEN_ID_FIELDS:
                token_ids[key] = value
            elif key in _DECODING_FIELDS:
                dropped[key] = value
    return GenerationConfig(**token_ids), dropped


def generation_config_for(settings: GenerationSettings, max_new_tokens: int) -> GenerationConfig:
    """Translate request settings into the config passed to ``generate()``.

    ``temperature <= 0`` gives greedy decoding with no temperature, top-p or
    top-k set. ``temperature > 0`` samples with all three set explicitly,
    and ``top_k == 0`` turns top-k filtering off.
    """
    if settings.greedy:
        return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=True,
        num_beams=1,
        temperature=float(settings.temperature),
        top_p=float(settings.top_p),
        top_k=int(settings.top_k),
    )


def generation_kwargs_for_log(config: GenerationConfig, seed: int) -> dict[str, Any]:
    """Return the decoding fields set in ``config`` plus the batch seed, for logging and tests."""
    fields = ("max_new_tokens", "do_sample", "num_beams", "temperature", "top_p", "top_k")
    logged: dict[str, Any] = {"seed": seed}
    for key in fields:
        value = getattr(config, key, None)
        if value is not None:
            logged[key] = value
    if not config.do_sample:
        for key in ("temperature", "top_p", "top_k"):
            logged.pop(key, None)
    return logged


def batch_seed(seeds: list[int]) -> int:
    """Derive one torch seed from the seeds of a batch's requests.

    A batch whose requests share a seed uses it unchanged, so a batch of one
    reproduces that request's own seed.

    NOTE: one seed drives the whole batch, so a sampled answer depends on
    which requests share its batch. Reruns reproduce it only with the same
    batch size and request order.
    """
    if len(set(seeds)) == 1:
        return int(seeds[0])
    return zlib.crc32(",".join(str(seed) for seed in seeds).encode())


def context_limit(model_config: Any, tokenizer: Any) -> int | None:
    """Return the largest prompt-plus-answer length in tokens the model supports, or None if unknown.

    Uses ``max_position_embeddings`` of the text config and the tokenizer's
    ``model_max_length`` when that is a real value, whichever is smaller.
    """
    limits = []
    text_config = model_config.get_text_config(decoder=True)
    max_positions = getattr(text_config, "max_position_embeddings", None)
    if isinstance(max_positions, int) and max_positions > 0:
        limits.append(max_positions)
    model_max_length = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max_length, int) and 0 < model_max_length < _UNSET_MODEL_MAX_LENGTH:
        limits.append(model_max_length)
    return min(limits) if limits else None


def check_token_budget(
    prompt_lengths: list[int],
    image_counts: list[int],
    max_new_tokens: int,
    limit: int | None,
    pixel_setting: str,
) -> None:
    """Raise :class:`ModelConfigError` when a prompt plus ``max_new_tokens`` exceeds ``limit``.

    Parameters
    ----------
    prompt_lengths : list of int
        Prompt length of each request in tokens, image tokens expanded, padding excluded.
    image_counts : list of int
        Number of images in each request.
    max_new_tokens : int
        Answer length budget in tokens.
    limit : int or None
        Context length in tokens; None skips the check.
    pixel_setting : str
        Name of the setting that controls image tokens, quoted in the message.
    """
    if limit is None:
        return
    for index, (length, images) in enumerate(zip(prompt_lengths, image_counts)):
        if length + max_new_tokens > limit:
            raise ModelConfigError(
                f"request {index} of the batch needs {length} prompt tokens ({images} images) + "
                f"{max_new_tokens} new tokens = {length + max_new_tokens}, over the model's context length "
                f"of {limit} tokens. Use fewer shots, a smaller {pixel_setting}, or a smaller max_new_tokens."
            )
