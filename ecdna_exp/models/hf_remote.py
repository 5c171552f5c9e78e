"""MiniCPM-V 2 through the Python code published with its checkpoint (``trust_remote_code``).

MiniCPM-V 2 predates native transformers support, so it runs its own
``chat()`` method: one image per conversation, and ``sampling=False`` for
temperature 0, as in the earlier MiniCPM-V 2 counting runs this project reproduces.

NOTE: no test runs this path. The remote code cannot be fetched offline and
nothing imitates it, so only the configuration checks before loading are tested.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from PIL import Image

from ecdna_exp.models.base import CountingModel, ModelConfigError, Request, Response
from ecdna_exp.models.hf import pick_dtype
from ecdna_exp.models.hf_checkpoint import resolve_checkpoint
from ecdna_exp.models.hf_decoding import is_recoverable_fault

log = logging.getLogger(__name__)


def text_only_messages(messages: list[dict]) -> list[dict]:
    """Return ``messages`` with each content list joined into one string and image parts dropped."""
    flattened = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = "\n".join(part["text"] for part in content if part.get("type") == "text")
        flattened.append({"role": message["role"], "content": content})
    return flattened


class MiniCPMV2Chat(CountingModel):
    """MiniCPM-V 2 answering through its own ``chat()`` method.

    Parameters
    ----------
    name, checkpoint, checkpoint_dir, local_name, revision, dtype, device_map, max_new_tokens
        As for :class:`ecdna_exp.models.hf.TransformersVLM`.
    trust_remote_code : bool
        Must be set to True explicitly: loading runs the checkpoint's Python code.
    batch_size : int
        Only 1 is supported, because ``chat()`` answers one conversation per call.
    """

    max_images_per_request = 1

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
        trust_remote_code: bool = False,
    ) -> None:
        if trust_remote_code is not True:
            raise ModelConfigError(
                f"{checkpoint!r} runs Python code shipped with the checkpoint. Review it and set "
                "model.trust_remote_code=true to allow it"
            )
        if checkpoint_dir is None and not revision:
            raise ModelConfigError(
                f"model.revision is empty: remote code from {checkpoint!r} must be pinned to the commit hash "
                "you reviewed (model.revision=<40-character hash>)"
            )
        if batch_size != 1:
            raise ModelConfigError(
                f"invalid model.batch_size {batch_size}: {name} generates one answer per chat() call, so set model.batch_size=1"
            )
        self.name = name
        self.batch_size = 1
        self.max_new_tokens = int(max_new_tokens)
        self.resolved = resolve_checkpoint(
            checkpoint, checkpoint_dir=checkpoint_dir, local_name=local_name or name, revision=revision
        )
        self.dtype = pick_dtype(dtype, torch.cuda.is_available())
        self.last_generate_kwargs: dict[str, Any] = {}
        self._load(device_map)

    def _load(self, device_map) -> None:
        from transformers import AutoModel, AutoTokenizer

        source = self.resolved.source
        hub_kwargs = {} if self.resolved.is_local else {"revision": self.resolved.revision}
        model_kwargs: dict[str, Any] = {"dtype": self.dtype, "trust_remote_code": True, **hub_kwargs}
        if device_map is not None:
            model_kwargs["device_map"] = device_map
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=True, **hub_kwargs)
            self.model = AutoModel.from_pretrained(source, **model_kwargs)
        except (OSError, ValueError, ImportError) as error:
            raise ModelConfigError(
                f"loading checkpoint {self.resolved.checkpoint!r} from {source} failed: {error}"
            ) from error
        if device_map is None:
            self.model.to("cuda" if torch.cuda.is_available() else "cpu")
        self.model.eval()

    def describe(self) -> dict[str, Any]:
        """Return what determines this model's answers: checkpoint, revision, weights and dtype."""
        return {
            "name": self.name,
            "backend": "transformers-remote-code",
            "checkpoint": self.resolved.checkpoint,
            "revision": self.resolved.revision,
            "weights": self.resolved.source,
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    def _chat(self, request: Request) -> str:
        images = request.images()
        if len(images) != 1:
            raise ModelConfigError(
                f"{self.name} takes exactly one image per conversation, request {request.image_id!r} has "
                f"{len(images)}; use zero-shot prompts or text-only examples"
            )
        settings = request.settings
        chat_kwargs: dict[str, Any] = {
            "sampling": not settings.greedy,
            "max_new_tokens": settings.max_new_tokens if settings.max_new_tokens > 0 else self.max_new_tokens,
        }
        # NOTE: with sampling=False the published chat() decodes with its own non-sampling settings,
        # which are kept as they are to match the earlier MiniCPM-V 2 runs.
        if not settings.greedy:
            chat_kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
        self.last_generate_kwargs = {**chat_kwargs, "seed": settings.seed}
        torch.manual_seed(settings.seed)
        image = Image.fromarray(np.asarray(images[0], dtype=np.uint8)).convert("RGB")
        with torch.inference_mode():
            result = self.model.chat(
                image=image,
                msgs=text_only_messages(request.messages),
                context=None,
                tokenizer=self.tokenizer,
                **chat_kwargs,
            )
        answer = result[0] if isinstance(result, tuple) else result
        return str(answer).strip()

    def generate(self, requests: list[Request]) -> list[Response]:
        """Answer each request with one ``chat()`` call, turning OOM or NaN faults into error responses."""
        responses = []
        for request in requests:
            started = time.perf_counter()
            try:
                answer = self._chat(request)
            except Exception as error:
                if not is_recoverable_fault(error):
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                log.error(
                    "%s: request for image %s failed: %s: %s",
                    self.name,
                    request.image_id,
                    type(error).__name__,
                    error,
                )
                responses.append(
                    Response(None, time.perf_counter() - started, f"{type(error).__name__}: {error}")
                )
                continue
            responses.append(Response(answer_text=answer, latency_s=time.perf_counter() - started))
        return responses

    def close(self) -> None:
        """Drop the model and tokenizer and return GPU memory to the driver."""
        for attribute in ("model", "tokenizer"):
            if hasattr(self, attribute):
                delattr(self, attribute)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
