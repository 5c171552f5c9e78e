"""Vision-language models run in-process through transformers (Qwen2-VL, MiniCPM-V 4.6, Pixtral).

One class serves every family that ``AutoProcessor`` and
``AutoModelForImageTextToText`` can load: the processor's chat template
renders the request's messages, images go in as PIL images in message order,
and batches are left-padded so batched and single answers agree.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import defaultdict
from typing import Any

import torch

from ecdna_exp.models.base import CountingModel, ModelConfigError, Request, Response
from ecdna_exp.models.hf_checkpoint import ResolvedCheckpoint, resolve_checkpoint
from ecdna_exp.models.hf_decoding import (
    NonFiniteLogitsCheck,
    batch_seed,
    check_token_budget,
    context_limit,
    generation_config_for,
    generation_kwargs_for_log,
    is_recoverable_fault,
    neutral_generation_config,
)
from ecdna_exp.models.hf_inputs import encode_requests

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_dtype(dtype: str, on_gpu: bool) -> torch.dtype:
    """Map a dtype name to a torch dtype. ``"auto"`` is bfloat16 on a GPU and float32 on the CPU."""
    if dtype == "auto":
        return torch.bfloat16 if on_gpu else torch.float32
    if dtype not in _DTYPES:
        raise ModelConfigError(f"invalid model.dtype {dtype!r}; use auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


class TransformersVLM(CountingModel):
    """A counting model loaded with ``AutoProcessor`` and ``AutoModelForImageTextToText``.

    Decoding uses only the request's :class:`GenerationSettings`: the
    checkpoint's own sampling defaults (and its ``repetition_penalty``) are
    dropped at load time and logged.

    Parameters
    ----------
    name : str
        Model name used in logs and results.
    checkpoint : str
        Hub id or local folder of a checkpoint in the transformers format.
    checkpoint_dir : str, optional
        Folder of local checkpoints; when set, weights come from
        ``checkpoint_dir / local_name`` and nothing is looked up on the hub.
    local_name : str, optional
        Sub-folder under ``checkpoint_dir``; defaults to ``name``.
    revision : str, optional
        Hub branch, tag or commit hash.
    dtype : {"auto", "float32", "bfloat16", "float16"}
        Weight dtype; ``auto`` is bfloat16 on a GPU and float32 on the CPU.
    device_map : str or dict, optional
        Passed to ``from_pretrained`` (``"auto"`` spreads a large model over
        GPUs). None places the whole model on the GPU if there is one.
    batch_size : int
        Requests per ``generate()`` call.
    max_new_tokens : int
        Answer budget in tokens for requests whose settings give none (``<= 0``).
    min_pixels, max_pixels : int, optional
        Qwen2-VL image budget in pixels per image, after resizing.
    image_processor_kwargs : dict, optional
        Further image-processor options for each call, e.g.
        ``{"size": {"longest_edge": 512}}`` for Pixtral or
        ``{"max_slice_nums": 1}`` for MiniCPM-V 4.6.
    trust_remote_code : bool
        Allow Python code from the checkpoint; off by default.
    attn_implementation : str, optional
        ``"sdpa"``, ``"eager"`` or ``"flash_attention_2"``; None keeps the default.
    max_images_per_request : int, optional
        Largest number of images one conversation may carry.
    """

    def __init__(
        self,
        *,
        name: str,
        checkpoint: str,
        checkpoint_dir: str | None = None,
        local_name: str | None = None,
        revision: str | None = None,
        dtype: str = "auto",
        device_map: str | dict | None = None,
        batch_size: int = 1,
        max_new_tokens: int = 64,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        image_processor_kwargs: dict | None = None,
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
        max_images_per_request: int | None = None,
    ) -> None:
        self._set_options(name, batch_size, max_new_tokens, min_pixels, max_pixels, image_processor_kwargs)
        self.max_images_per_request = max_images_per_request
        self.resolved = resolve_checkpoint(
            checkpoint, checkpoint_dir=checkpoint_dir, local_name=local_name or name, revision=revision
        )
        on_gpu = torch.cuda.is_available()
        self.dtype = pick_dtype(dtype, on_gpu)
        self._load(device_map, trust_remote_code, attn_implementation, on_gpu)

    @classmethod
    def from_loaded(
        cls,
        model,
        processor,
        *,
        name: str,
        checkpoint: str,
        batch_size: int = 1,
        max_new_tokens: int = 64,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        image_processor_kwargs: dict | None = None,
    ) -> TransformersVLM:
        """Wrap a model and processor already in memory, such as randomly initialised ones for benchmarks.

        ``checkpoint`` is only a label; :meth:`describe` reports the weights as ``"in memory"``.
        """
        vlm = cls.__new__(cls)
        vlm._set_options(name, batch_size, max_new_tokens, min_pixels, max_pixels, image_processor_kwargs)
        vlm.max_images_per_request = None
        vlm.resolved = ResolvedCheckpoint(checkpoint=checkpoint, source="in memory", revision=None)
        vlm.dtype = model.dtype
        vlm._prepare(model.eval(), processor)
        return vlm

    def _set_options(
        self, name, batch_size, max_new_tokens, min_pixels, max_pixels, image_processor_kwargs
    ) -> None:
        if batch_size < 1:
            raise ModelConfigError(f"invalid model.batch_size {batch_size}; it must be at least 1")
        self.name = name
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.image_processor_kwargs = dict(image_processor_kwargs or {})
        #: Decoding fields and seed of the latest ``generate()`` call, for logging.
        self.last_generate_kwargs: dict[str, Any] = {}

    def _load(
        self, device_map, trust_remote_code: bool, attn_implementation: str | None, on_gpu: bool
    ) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        source = self.resolved.source
        hub_kwargs = {} if self.resolved.is_local else {"revision": self.resolved.revision}
        model_kwargs: dict[str, Any] = {
            "dtype": self.dtype,
            "trust_remote_code": trust_remote_code,
            **hub_kwargs,
        }
        if device_map is not None:
            model_kwargs["device_map"] = device_map
        if attn_implementation:
            model_kwargs["attn_implementation"] = attn_implementation
        started = time.perf_counter()
        try:
            self.processor = AutoProcessor.from_pretrained(
                source, trust_remote_code=trust_remote_code, **hub_kwargs
            )
            self.model = AutoModelForImageTextToText.from_pretrained(source, **model_kwargs)
        except (OSError, ValueError) as error:
            raise ModelConfigError(
                f"loading checkpoint {self.resolved.checkpoint!r} from {source} failed: {error}"
            ) from error
        if device_map is None:
            self.model.to("cuda" if on_gpu else "cpu")
        self._prepare(self.model.eval(), self.processor)
        log.info(
            "%s: loaded %s (%s) in %.1f s, dtype %s, device %s, context %s tokens",
            self.name,
            self.resolved.checkpoint,
            source,
            time.perf_counter() - started,
            self.dtype,
            self.model.device,
            self.context_limit,
        )

    def _prepare(self, model, processor) -> None:
        """Set left padding, drop the checkpoint's decoding defaults and read the context length."""
        self.model = model
        self.processor = processor
        self.model.generation_config, dropped = neutral_generation_config(self.model.generation_config)
        if dropped:
            log.info("%s: ignoring the checkpoint's generation defaults %s", self.name, dropped)
        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if self.model.generation_config.pad_token_id is None:
            self.model.generation_config.pad_token_id = tokenizer.pad_token_id
        self.context_limit = context_limit(self.model.config, tokenizer)
        self._images_kwargs = self._build_images_kwargs()

    def _is_qwen2_vl(self) -> bool:
        image_processor = self.processor.image_processor
        return any(cls.__name__.startswith("Qwen2VLImageProcessor") for cls in type(image_processor).__mro__)

    def _build_images_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.image_processor_kwargs)
        if self.min_pixels is None and self.max_pixels is None:
            return kwargs
        if not self._is_qwen2_vl():
            raise ModelConfigError(
                f"model.min_pixels/max_pixels apply to Qwen2-VL image processors, not "
                f"{type(self.processor.image_processor).__name__}; set model.image_processor_kwargs instead"
            )
        size = dict(self.processor.image_processor.size)
        if self.min_pixels is not None:
            size["shortest_edge"] = int(self.min_pixels)
        if self.max_pixels is not None:
            size["longest_edge"] = int(self.max_pixels)
        kwargs["size"] = size
        return kwargs

    @property
    def pixel_setting(self) -> str:
        """Name of the setting that controls how many tokens an image takes, for error messages."""
        if self._is_qwen2_vl():
            return "model.max_pixels"
        return "image size in model.image_processor_kwargs"

    def describe(self) -> dict[str, Any]:
        """Return what determines this model's answers: checkpoint, weights, dtype and pixel budget."""
        weights = self.resolved.source
        if self.resolved.commit_hash:
            weights = f"{self.resolved.checkpoint}@{self.resolved.commit_hash}"
        return {
            "name": self.name,
            "backend": "transformers",
            "checkpoint": self.resolved.checkpoint,
            "revision": self.resolved.revision,
            "weights": weights,
            "dtype": str(self.dtype).removeprefix("torch."),
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "image_processor_kwargs": self.image_processor_kwargs,
        }

    def encode(self, requests: list[Request]):
        """Render and tokenize ``requests`` as one left-padded batch.

        Returns
        -------
        tuple of (BatchFeature, list of int, list of int)
            Model inputs, prompt length of each request in tokens (image
            tokens expanded, padding excluded), and image count of each request.
        """
        return encode_requests(self.processor, requests, self._images_kwargs)

    def _generate_texts(self, requests: list[Request]) -> list[str]:
        """Answer requests that share decoding settings in one ``generate()`` call."""
        settings = requests[0].settings
        max_new_tokens = settings.max_new_tokens if settings.max_new_tokens > 0 else self.max_new_tokens
        inputs, prompt_lengths, image_counts = self.encode(requests)
        check_token_budget(
            prompt_lengths, image_counts, max_new_tokens, self.context_limit, self.pixel_setting
        )

        config = generation_config_for(settings, max_new_tokens)
        seed = batch_seed([request.settings.seed for request in requests])
        self.last_generate_kwargs = generation_kwargs_for_log(config, seed)
        torch.manual_seed(seed)
        inputs = inputs.to(self.model.device, dtype=self.dtype)
        with torch.inference_mode():
            output_ids = self.model.generate(
                **inputs, generation_config=config, logits_processor=[NonFiniteLogitsCheck()]
            )
        new_ids = output_ids[:, inputs["input_ids"].shape[1] :]
        answers = self.processor.batch_decode(new_ids, skip_special_tokens=True)
        return [answer.strip() for answer in answers]

    def _answer_group(self, requests: list[Request]) -> list[Response]:
        """Answer one batch, and retry its requests one at a time after an OOM or NaN-logits fault."""
        started = time.perf_counter()
        try:
            answers = self._generate_texts(requests)
        except Exception as error:
            if not is_recoverable_fault(error):
                raise
            fault = f"{type(error).__name__}: {error}"
        else:
            latency_s = (time.perf_counter() - started) / len(requests)
            return [Response(answer_text=answer, latency_s=latency_s) for answer in answers]

        # Retry outside the except block: the traceback of a live exception keeps the failed
        # call's tensors, and with them its GPU memory, allocated.
        self._release_memory()
        if len(requests) > 1:
            log.warning(
                "%s: batch of %d failed (%s); retrying one request at a time", self.name, len(requests), fault
            )
            return [response for request in requests for response in self._answer_group([request])]
        log.error("%s: request for image %s failed: %s", self.name, requests[0].image_id, fault)
        return [Response(answer_text=None, latency_s=time.perf_counter() - started, error=fault)]

    def generate(self, requests: list[Request]) -> list[Response]:
        """Answer ``requests`` in batches of ``batch_size`` and return one response per request, in order.

        Requests are batched only with others of equal decoding settings
        (seeds aside), so one ``generate()`` call never mixes temperatures.
        """
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            settings = request.settings
            key = (settings.temperature, settings.top_p, settings.top_k, settings.max_new_tokens)
            groups[key].append(index)
        responses: list[Response | None] = [None] * len(requests)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                for index, response in zip(chunk, self._answer_group([requests[i] for i in chunk])):
                    responses[index] = response
        return responses

    def _release_memory(self) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def close(self) -> None:
        """Drop the model and processor and return GPU memory to the driver."""
        for attribute in ("model", "processor"):
            if hasattr(self, attribute):
                delattr(self, attribute)
        self._release_memory()
