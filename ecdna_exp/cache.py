"""A content-addressed store of model answers, kept in SQLite under ``mlruns/``.

The key covers everything that decides an answer: the model's identity
(checkpoint, revision, dtype, pixel budget, as returned by
``CountingModel.describe()``), the rendered conversation with a digest of each
image's pixels, and the generation settings including the trial seed (left out for greedy
decoding, which does not use it). Each
answer is committed as soon as its batch finishes, so a sweep killed at any
point keeps every finished answer and recomputes none on restart. Backend
failures are not stored, so they are retried on the next run.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ecdna_exp.models.base import GenerationSettings, Message, Response


def _jsonable_messages(messages: list[Message]) -> list[dict[str, Any]]:
    rendered = []
    for message in messages:
        parts = []
        for part in message["content"]:
            if part.get("type") == "image":
                image = np.ascontiguousarray(part["image"])
                digest = hashlib.sha256(image.tobytes()).hexdigest()
                parts.append({"type": "image", "sha256": digest, "shape": list(image.shape)})
            else:
                parts.append(part)
        rendered.append({"role": message["role"], "content": parts})
    return rendered


def cache_key(model_identity: dict[str, Any], messages: list[Message], settings: GenerationSettings) -> str:
    """Return the hex SHA-256 key of one request's answer."""
    settings_key = settings.to_dict()
    if settings.greedy:
        # Greedy decoding ignores the seed, so repeated greedy trials share one answer.
        settings_key.pop("seed")
    payload = {
        "model": model_identity,
        "messages": _jsonable_messages(messages),
        "settings": settings_key,
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class AnswerCache:
    """Answers by key in an SQLite file; safe to share between processes.

    ``path=None`` gives a cache that stores nothing, for ``cache.enabled=false``.
    """

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._connection = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._connection = sqlite3.connect(self.path, timeout=60.0, check_same_thread=False)
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute(
                "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer_text TEXT NOT NULL,"
                " latency_s REAL NOT NULL, points TEXT, created TEXT DEFAULT CURRENT_TIMESTAMP)"
            )
            self._connection.commit()

    def get(self, key: str) -> Response | None:
        """Return the response stored under ``key``, or None."""
        if self._connection is None:
            self.misses += 1
            return None
        with self._lock:
            row = self._connection.execute(
                "SELECT answer_text, latency_s, points FROM answers WHERE key = ?", (key,)
            ).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        points = np.asarray(json.loads(row[2]), dtype=float).reshape(-1, 2) if row[2] is not None else None
        return Response(answer_text=row[0], latency_s=float(row[1]), points=points)

    def put_many(self, entries: list[tuple[str, Response]]) -> None:
        """Store ``(key, response)`` pairs in one transaction; responses with an error are skipped."""
        rows = [
            (key, r.answer_text, r.latency_s, None if r.points is None else json.dumps(np.round(r.points, 2).tolist()))
            for key, r in entries
            if r.ok
        ]
        if self._connection is None or not rows:
            return
        with self._lock:
            self._connection.executemany(
                "INSERT OR REPLACE INTO answers (key, answer_text, latency_s, points) VALUES (?, ?, ?, ?)", rows
            )
            self._connection.commit()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
