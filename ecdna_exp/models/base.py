"""The interface every counting model implements.

A model receives a batch of :class:`Request` objects and returns one
:class:`Response` per request, in order. Requests carry chat messages in the
structure used by transformers chat templates::

    {"role": "system" | "user" | "assistant",
     "content": [{"type": "text", "text": "..."},
                 {"type": "image", "image": <np.ndarray (H, W, 3) uint8>}]}

Images travel as arrays, so every backend gets the same preprocessed pixels.
Baselines answer in text as well, so every answer goes through the same parser.
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

Message = dict[str, Any]


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings for one request.

    ``temperature == 0`` means greedy decoding: backends turn sampling off and
    pass no temperature on. For ``temperature > 0`` they sample with the
    ``top_p`` and ``top_k`` given here (``top_k == 0`` disables top-k), so a
    checkpoint's own defaults never decide the outcome of a temperature sweep.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Request:
    """One conversation to continue with a single assistant turn."""

    image_id: str
    messages: list[Message]
    settings: GenerationSettings = field(default_factory=GenerationSettings)

    def images(self) -> list[np.ndarray]:
        """Return every image in the conversation, in order; the last is the query image."""
        return [
            part["image"]
            for message in self.messages
            if isinstance(message.get("content"), list)
            for part in message["content"]
            if part.get("type") == "image"
        ]

    def query_image(self) -> np.ndarray:
        images = self.images()
        if not images:
            raise ValueError(f"request for image {self.image_id!r} contains no image")
        return images[-1]


@dataclass
class Response:
    """The answer to one request.

    ``answer_text`` is None exactly when ``error`` is set: a failure of the
    backend (out of memory, a server error, a timeout) and not an answer.
    ``latency_s`` is the wall time spent on this request in seconds; for a
    batch it is the batch time divided by the batch size.
    """

    answer_text: str | None
    latency_s: float = 0.0
    error: str | None = None
    #: ``(N, 2)`` float (row, column) positions of the objects counted, in
    #: pixels of the query image, from models that localise (classical
    #: counter, segmenter); None for models that answer in text only.
    points: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class CountingModel(abc.ABC):
    """A model that answers counting conversations.

    Subclasses set ``name`` and ``batch_size`` and implement :meth:`generate`.
    A failure that concerns one request is returned as a :class:`Response`
    with ``error`` set, and the other requests of the batch still get answers.
    A fault of the whole configuration (missing weights, an invalid setting)
    raises instead.
    """

    name: str = "model"
    batch_size: int = 1
    #: Largest number of images one conversation may carry, or None for no limit.
    max_images_per_request: int | None = None

    @abc.abstractmethod
    def generate(self, requests: list[Request]) -> list[Response]:
        """Answer ``requests``; returns one response per request, in order."""

    def describe(self) -> dict[str, Any]:
        """Return what identifies this model's answers, for caching and logging."""
        return {"name": self.name}

    def close(self) -> None:
        """Release memory, connections or processes held by the model."""


class ModelConfigError(ValueError):
    """A model configuration that cannot run: missing weights, a prompt over the token budget, bad values."""
