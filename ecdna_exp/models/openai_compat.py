"""Counting through an OpenAI-compatible chat-completions server.

The backend posts each request to ``{base_url}/chat/completions``, as served by
``vllm serve``, the Mistral API and other OpenAI-compatible servers. Images are
sent inline as base64 data URLs, so every server sees the same preprocessed
pixels that the local backends get. Requests of one batch run concurrently on
a thread pool, and each one is retried on its own, so a request that still
fails becomes an error :class:`Response` while the others go on.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import io
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import httpx
import numpy as np
from PIL import Image

from ecdna_exp.models.base import (
    CountingModel,
    GenerationSettings,
    Message,
    ModelConfigError,
    Request,
    Response,
)

log = logging.getLogger(__name__)

#: Image formats that a data URL may carry, with their MIME types.
IMAGE_MIME_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
#: Characters of a server's error body kept in a Response error and in logs.
BODY_EXCERPT_CHARS = 300
#: vLLM's value for disabled top-k. vLLM releases of early 2025 reject top_k=0 with HTTP 400.
VLLM_TOP_K_DISABLED = -1


def encode_image(image: np.ndarray, image_format: str = "png") -> str:
    """Encode an image as a base64 data URL.

    Parameters
    ----------
    image : np.ndarray
        ``(H, W, 3)`` uint8 RGB array.
    image_format : str
        A key of :data:`IMAGE_MIME_TYPES`. PNG is lossless and written at
        zlib level 1, which on 256x256 metaphase patches encodes about 3x
        faster than Pillow's default level 6 for files about 30% larger.
        JPEG and WebP are lossy at Pillow's default quality.

    Returns
    -------
    str
        ``data:<mime type>;base64,<payload>``.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"expected an (H, W, 3) uint8 image, got shape {image.shape} and dtype {image.dtype}"
        )
    buffer = io.BytesIO()
    options = {"compress_level": 1} if image_format == "png" else {}
    Image.fromarray(image, mode="RGB").save(buffer, format=image_format.upper(), **options)
    payload = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"data:{IMAGE_MIME_TYPES[image_format]};base64,{payload}"


class DataUrlCache:
    """Data URLs of recently encoded images, keyed by a hash of their pixels.

    Few-shot example images recur in every request of a run, so the cache
    encodes each of them once while it is among the ``max_entries`` most
    recently used images. Calling the cache returns the data URL of an
    ``(H, W, 3)`` uint8 image, as :func:`encode_image` does.
    """

    def __init__(self, image_format: str = "png", max_entries: int = 256) -> None:
        self.image_format = image_format
        self.max_entries = max_entries
        self._urls: OrderedDict[tuple[bytes, tuple[int, ...]], str] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, image: np.ndarray) -> str:
        key = (hashlib.blake2b(image.tobytes(), digest_size=16).digest(), image.shape)
        with self._lock:
            url = self._urls.get(key)
            if url is not None:
                self._urls.move_to_end(key)
                return url

        url = encode_image(image, self.image_format)
        with self._lock:
            self._urls[key] = url
            if len(self._urls) > self.max_entries:
                self._urls.popitem(last=False)
        return url

    def __len__(self) -> int:
        return len(self._urls)


def to_openai_messages(
    messages: list[Message], encode: Callable[[np.ndarray], str] = encode_image
) -> list[dict[str, Any]]:
    """Convert transformers-style chat messages to the OpenAI chat format.

    Image parts become ``image_url`` parts with a data URL, in their original
    order. A message whose parts are all text is sent as one string, because
    some servers accept content lists only in user messages.

    Parameters
    ----------
    messages : list of dict
        Messages as in :mod:`ecdna_exp.models.base`, with images as
        ``(H, W, 3)`` uint8 arrays.
    encode : callable
        Function that turns an image array into a data URL, such as
        :func:`encode_image` or a :class:`DataUrlCache`.

    Returns
    -------
    list of dict
        Messages ready for the ``messages`` field of a chat-completions request.
    """
    converted = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            converted.append({"role": message["role"], "content": content})
            continue

        parts = []
        for part in content:
            if part.get("type") == "text":
                parts.append({"type": "text", "text": part["text"]})
            elif part.get("type") == "image":
                url = encode(part["image"])
                parts.append({"type": "image_url", "image_url": {"url": url}})
            else:
                raise ValueError(
                    f"unsupported content part type {part.get('type')!r} in a {message['role']} message"
                )

        if all(part["type"] == "text" for part in parts):
            converted.append({"role": message["role"], "content": "".join(part["text"] for part in parts)})
        else:
            converted.append({"role": message["role"], "content": parts})
    return converted


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Return the wait in seconds that a ``Retry-After`` header requests.

    Accepts both forms of RFC 9110: delay seconds (``"2"``) and an HTTP date.
    Returns None for a missing, unreadable or non-finite value, and 0 for a
    date in the past.
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max((when - now).total_seconds(), 0.0)


def _is_retryable(status_code: int) -> bool:
    return status_code == 429 or 500 <= status_code <= 599


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    if len(flat) > BODY_EXCERPT_CHARS:
        return flat[:BODY_EXCERPT_CHARS] + "..."
    return flat


class OpenAICompatModel(CountingModel):
    """A model behind an OpenAI-compatible chat-completions server.

    Parameters
    ----------
    name : str
        Name of this configuration in results and MLflow.
    base_url : str
        Server root including the API version, e.g. ``http://127.0.0.1:8000/v1``.
    model : str
        Model name that the server expects in the ``model`` field.
    api_key_env : str or None
        Name of the environment variable that contains the API key, sent as
        ``Authorization: Bearer <key>``. None sends no Authorization header.
    max_concurrency : int
        Requests in flight at the same time.
    timeout_s : float
        httpx timeout in seconds for connecting, and for each read and write.
    max_retries : int
        Retries after the first attempt on HTTP 429, HTTP 5xx, timeouts and
        connection errors. Other 4xx responses are never retried.
    backoff_s : float
        Wait before the first retry in seconds, doubled for each further retry.
    max_wait_s : float
        Upper bound in seconds for any wait between attempts, including a
        server's ``Retry-After``.
    max_images_per_request : int or None
        The server's image limit per conversation (vLLM:
        ``--limit-mm-per-prompt``), or None for no limit.
    batch_size : int
        Requests the runner hands to one :meth:`generate` call.
    image_format : str
        Encoding of images in data URLs: ``png`` (lossless), ``jpeg`` or ``webp``.
    send_top_k : bool
        Send ``top_k`` when sampling. vLLM accepts it; the OpenAI and Mistral
        APIs reject unknown fields.
    send_seed : bool
        Send the request's seed.
    seed_field : str
        Payload field for the seed: ``seed`` for OpenAI and vLLM,
        ``random_seed`` for the Mistral API.
    """

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        max_concurrency: int = 4,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        max_wait_s: float = 60.0,
        max_images_per_request: int | None = None,
        batch_size: int = 8,
        image_format: str = "png",
        send_top_k: bool = False,
        send_seed: bool = False,
        seed_field: str = "seed",
    ) -> None:
        _check_settings(
            base_url=base_url,
            max_concurrency=max_concurrency,
            timeout_s=timeout_s,
            max_retries=max_retries,
            backoff_s=backoff_s,
            max_wait_s=max_wait_s,
            max_images_per_request=max_images_per_request,
            batch_size=batch_size,
            image_format=image_format,
        )
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.max_concurrency = int(max_concurrency)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.max_wait_s = float(max_wait_s)
        self.max_images_per_request = None if max_images_per_request is None else int(max_images_per_request)
        self.batch_size = int(batch_size)
        self.image_format = image_format
        self.send_top_k = bool(send_top_k)
        self.send_seed = bool(send_seed)
        self.seed_field = seed_field

        self._data_urls = DataUrlCache(image_format)
        self._api_key = _read_api_key(api_key_env)
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        self._client = httpx.Client(
            base_url=self.base_url + "/",
            headers=headers,
            timeout=httpx.Timeout(self.timeout_s),
            limits=httpx.Limits(max_connections=self.max_concurrency),
        )
        log.info(
            "OpenAI-compatible model %s: %s at %s, %d concurrent requests",
            self.name,
            self.model,
            self.base_url,
            self.max_concurrency,
        )

    def check_image_budget(self, n_images: int) -> None:
        """Raise :class:`ModelConfigError` if ``n_images`` exceed the server's image limit.

        Parameters
        ----------
        n_images : int
            Images in one conversation: the few-shot examples plus the query image.
        """
        limit = self.max_images_per_request
        if limit is None or n_images <= limit:
            return
        raise ModelConfigError(
            f"{n_images} images per request (shots + 1) exceed the server's limit of {limit} "
            f"for model {self.name}. Lower the number of shots to at most {limit - 1}, or start the "
            f"server with a higher limit (vLLM: --limit-mm-per-prompt) and set "
            f"model.max_images_per_request to match."
        )

    def payload_settings(self, settings: GenerationSettings) -> dict[str, Any]:
        """Return the payload fields that one request sends, without messages and key.

        Greedy decoding (``temperature == 0``) sends only ``temperature: 0``,
        which OpenAI-compatible servers treat as greedy. Sampling sends
        ``temperature`` and ``top_p``, plus ``top_k`` when ``send_top_k`` is set
        (with ``top_k == 0`` sent as vLLM's ``-1``). The seed is sent in both
        cases when ``send_seed`` is set.
        """
        fields: dict[str, Any] = {"model": self.model, "max_tokens": int(settings.max_new_tokens)}
        if settings.greedy:
            fields["temperature"] = 0
        else:
            fields["temperature"] = float(settings.temperature)
            fields["top_p"] = float(settings.top_p)
            if self.send_top_k:
                fields["top_k"] = int(settings.top_k) if settings.top_k > 0 else VLLM_TOP_K_DISABLED
        if self.send_seed:
            fields[self.seed_field] = int(settings.seed)
        return fields

    def generate(self, requests: list[Request]) -> list[Response]:
        """Send ``requests`` concurrently and return one response per request, in order.

        Every request is checked against the image limit and encoded before the
        first one is sent, so a configuration fault raises before any server
        time is spent. ``latency_s`` of a response covers all its attempts and
        the waits between them.

        Raises
        ------
        ModelConfigError
            If a request carries more images than ``max_images_per_request``.
        """
        for request in requests:
            self.check_image_budget(len(request.images()))
        payloads = [self._build_payload(request) for request in requests]
        if not requests:
            return []

        workers = min(self.max_concurrency, len(requests))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{self.name}-http") as pool:
            return list(pool.map(self._complete, requests, payloads))

    def describe(self) -> dict[str, Any]:
        """Return what identifies this model's output, for caching and logging. The API key is not included."""
        return {
            "name": self.name,
            "backend": "openai",
            "base_url": self.base_url,
            "model": self.model,
            "image_format": self.image_format,
            "send_top_k": self.send_top_k,
            "send_seed": self.send_seed,
            "seed_field": self.seed_field,
        }

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def _build_payload(self, request: Request) -> dict[str, Any]:
        payload = self.payload_settings(request.settings)
        payload["messages"] = to_openai_messages(request.messages, self._data_urls)
        return payload

    def _retry_wait_s(self, attempt: int, retry_after_s: float | None) -> float:
        """Return the wait in seconds before retry number ``attempt + 1``."""
        if retry_after_s is not None:
            return min(retry_after_s, self.max_wait_s)
        return min(self.backoff_s * 2**attempt, self.max_wait_s)

    def _complete(self, request: Request, payload: dict[str, Any]) -> Response:
        """Send one request with retries and return its Response, which has ``error`` set on failure."""
        start = time.perf_counter()
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            retry_after_s = None
            try:
                http_response = self._client.post("chat/completions", json=payload)
            except httpx.TimeoutException as exc:
                failure = f"timed out after {self.timeout_s:g} s ({type(exc).__name__})"
            except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                failure = f"connection failed ({type(exc).__name__}: {exc})"
            except httpx.HTTPError as exc:
                return self._failed(
                    request, f"request failed ({type(exc).__name__}: {exc}) (not retried)", start
                )
            else:
                status = http_response.status_code
                if 200 <= status < 300:
                    return self._read_answer(request, http_response, start)
                failure = f"HTTP {status}: {_excerpt(http_response.text)}"
                if not _is_retryable(status):
                    return self._failed(request, f"{failure} (not retried)", start)
                retry_after_s = parse_retry_after(http_response.headers.get("Retry-After"))

            if attempt + 1 < attempts:
                wait_s = self._retry_wait_s(attempt, retry_after_s)
                log.warning(
                    "Request for image %s failed: %s, retry %d of %d in %.2f s",
                    request.image_id,
                    self._redact(failure),
                    attempt + 1,
                    self.max_retries,
                    wait_s,
                )
                time.sleep(wait_s)
        return self._failed(request, f"{failure} (gave up after {attempts} attempts)", start)

    def _read_answer(self, request: Request, http_response: httpx.Response, start: float) -> Response:
        """Extract the answer text from a chat-completions response with a 2xx status."""
        try:
            message = http_response.json()["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            error = (
                f"HTTP {http_response.status_code} without a chat completion: {_excerpt(http_response.text)}"
            )
            return self._failed(request, error, start)

        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if not isinstance(content, str):
            error = f"chat completion without answer text: {_excerpt(http_response.text)}"
            return self._failed(request, error, start)
        return Response(answer_text=content, latency_s=time.perf_counter() - start)

    def _failed(self, request: Request, error: str, start: float) -> Response:
        error = self._redact(f"POST {self.base_url}/chat/completions: {error}")
        log.error("Request for image %s failed: %s", request.image_id, error)
        return Response(answer_text=None, latency_s=time.perf_counter() - start, error=error)

    def _redact(self, text: str) -> str:
        """Remove the API key from text that a server may have echoed."""
        if self._api_key:
            return text.replace(self._api_key, "***")
        return text


def _read_api_key(api_key_env: str | None) -> str | None:
    if api_key_env is None:
        return None
    api_key = os.environ.get(api_key_env, "")
    if not api_key:
        raise ModelConfigError(
            f"environment variable {api_key_env} with the API key is not set or empty. "
            f"Export it, or set model.api_key_env=null for a server that needs no key."
        )
    return api_key


def _check_settings(
    *,
    base_url: str,
    max_concurrency: int,
    timeout_s: float,
    max_retries: int,
    backoff_s: float,
    max_wait_s: float,
    max_images_per_request: int | None,
    batch_size: int,
    image_format: str,
) -> None:
    """Raise :class:`ModelConfigError` for an invalid setting."""
    if not base_url.startswith(("http://", "https://")):
        raise ModelConfigError(f"base_url must start with http:// or https://, got {base_url!r}")
    if image_format not in IMAGE_MIME_TYPES:
        raise ModelConfigError(
            f"image_format must be one of {sorted(IMAGE_MIME_TYPES)}, got {image_format!r}"
        )
    minimums = {
        "max_concurrency": (max_concurrency, 1),
        "batch_size": (batch_size, 1),
        "max_retries": (max_retries, 0),
    }
    for key, (value, minimum) in minimums.items():
        if value < minimum:
            raise ModelConfigError(f"{key} must be at least {minimum}, got {value}")
    if timeout_s <= 0:
        raise ModelConfigError(f"timeout_s must be positive, got {timeout_s}")
    if backoff_s < 0 or max_wait_s < 0:
        raise ModelConfigError(
            f"backoff_s and max_wait_s must not be negative, got {backoff_s} and {max_wait_s}"
        )
    if max_images_per_request is not None and max_images_per_request < 1:
        raise ModelConfigError(
            f"max_images_per_request must be at least 1 or null, got {max_images_per_request}"
        )
