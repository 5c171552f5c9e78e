"""Prompts as chat messages, and the choice of few-shot examples.

A prompt config (``conf/prompt/*.yaml``) has:

``system``
    An optional system message (the study's personas: pathologist, AI agent, researcher).
``turns``
    The user turns of one conversation. The query image is attached to the
    first turn; each later turn is sent after the model's answer to the
    previous one. A single-turn prompt asks for the count directly; the
    multi-layer prompt describes, locates, then validates and answers.
``tool``
    Optional name of a tool whose output is shown with the query image
    (``segmenter``: its overlay as a second image and ``{candidate_count}``
    in the turns); see :mod:`ecdna_exp.tools`.
``points``
    For point-then-count prompts, the scale of the positions the model is
    asked for (``pixels`` or ``per_mille``); they are scored for localisation.
``example_question`` / ``example_answer``
    The user text and the assistant reply (``{count}`` is replaced by the true
    count) of each few-shot example. Examples are earlier user/assistant turns
    that carry their own image, placed before the query conversation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ecdna_exp.models.base import Message

SHOT_STRATEGIES = ("cover", "random")


@dataclass(frozen=True)
class PromptSpec:
    """A prompt config in Python form; see the module docstring for the fields."""

    name: str
    turns: tuple[str, ...]
    system: str | None = None
    example_question: str | None = None
    example_answer: str = "{count}"
    tool: str | None = None
    points: str | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> PromptSpec:
        turns = tuple(cfg.turns)
        if not turns:
            raise ValueError(f"prompt {cfg.name!r} has no turns")
        return cls(
            name=cfg.name,
            turns=turns,
            system=cfg.get("system"),
            example_question=cfg.get("example_question"),
            example_answer=cfg.get("example_answer", "{count}"),
            tool=cfg.get("tool"),
            points=cfg.get("points"),
        )

    @property
    def multi_turn(self) -> bool:
        return len(self.turns) > 1


def _user(text: str, *images: np.ndarray) -> Message:
    content: list[dict[str, Any]] = [{"type": "image", "image": image} for image in images]
    content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def _assistant(text: str) -> Message:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def build_opening(
    spec: PromptSpec,
    image: np.ndarray,
    examples: list[tuple[np.ndarray, int]] = (),
    fill: dict[str, Any] | None = None,
    extra_images: list[np.ndarray] = (),
) -> list[Message]:
    """Build the messages up to the first question about ``image``.

    Parameters
    ----------
    spec : PromptSpec
        The prompt.
    image : np.ndarray
        ``(H, W, 3)`` uint8 query image.
    examples : list of (image, count)
        Few-shot examples, each an ``(H, W, 3)`` uint8 image and its true ecDNA count.
    fill : dict, optional
        Values for ``{placeholders}`` in the turns, such as a tool's candidate count.
    extra_images : list of np.ndarray
        Images sent after the query image in the same turn, such as a tool's overlay.
    """
    fill = fill or {}
    messages: list[Message] = []
    if spec.system:
        messages.append({"role": "system", "content": [{"type": "text", "text": spec.system}]})
    example_question = spec.example_question or spec.turns[0]
    for example_image, example_count in examples:
        messages.append(_user(example_question.format(**fill), example_image))
        messages.append(_assistant(spec.example_answer.format(count=example_count)))
    messages.append(_user(spec.turns[0].format(**fill), image, *extra_images))
    return messages


def continue_conversation(messages: list[Message], answer_text: str, next_turn: str) -> list[Message]:
    """Return a copy of ``messages`` with the model's answer and the next user turn appended."""
    return [*messages, _assistant(answer_text), _user(next_turn)]


def select_examples(pool_counts: list[int], shots: int, strategy: str, seed: int) -> list[int]:
    """Choose the indices of ``shots`` few-shot examples from a pool.

    Parameters
    ----------
    pool_counts : list of int
        True ecDNA counts of the pool's samples, by pool index. The pool never
        contains evaluated images, so an example is never the image asked about.
    shots : int
        Number of examples; 0 returns an empty list.
    strategy : {"cover", "random"}
        ``cover`` spans the range of counts. The first examples have the counts
        closest to 0 and 1. The others have the counts closest to quantiles
        between the median and the 95th percentile of the pool's counts (the
        90th for a single one). So a 3-shot prompt shows zero, one and many ecDNA. ``random`` draws uniformly.
    seed : int
        Seed for drawing and for breaking ties between equal counts.

    Returns
    -------
    list of int
        Distinct pool indices in the order the examples are shown.
    """
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}")
    if strategy not in SHOT_STRATEGIES:
        raise ValueError(f"invalid shot strategy {strategy!r}; expected one of {SHOT_STRATEGIES}")
    if shots == 0:
        return []
    if shots > len(pool_counts):
        raise ValueError(f"shots={shots} exceeds the {len(pool_counts)} images of the few-shot pool; "
                         "raise dataset.pool_size or lower shots")
    rng = np.random.default_rng(seed)
    if strategy == "random":
        return [int(i) for i in rng.choice(len(pool_counts), size=shots, replace=False)]

    counts = np.asarray(pool_counts, dtype=float)
    n_many = max(shots - 2, 1)
    upper = np.quantile(counts, np.linspace(0.5, 0.95, n_many) if n_many > 1 else [0.9])
    targets = [0.0, 1.0, *upper][:shots] if shots > 1 else [float(np.median(counts))]
    jitter = rng.random(len(counts))
    chosen: list[int] = []
    for target in targets:
        order = np.lexsort((jitter, np.abs(counts - target)))
        chosen.append(int(next(i for i in order if i not in chosen)))
    return chosen


def describe_messages(messages: list[Message]) -> list[dict[str, str]]:
    """Render messages as ``{"role", "text"}`` pairs, each image shown as ``<image HxW>``.

    Used for golden tests and to log the prompt of a run in readable form.
    """
    rendered = []
    for message in messages:
        pieces = []
        for part in message["content"]:
            if part.get("type") == "image":
                height, width = part["image"].shape[:2]
                pieces.append(f"<image {height}x{width}>")
            else:
                pieces.append(part["text"])
        rendered.append({"role": message["role"], "text": "\n".join(pieces)})
    return rendered
