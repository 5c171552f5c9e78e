"""Tests of the OpenAI-compatible backend against a scripted server on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import logging
import socket
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import hydra.errors
import hydra.utils
import numpy as np
import pytest
from fake_openai_server import CannedReply, FakeOpenAIServer
from omegaconf import OmegaConf
from PIL import Image

from ecdna_exp.imaging import load_image
from ecdna_exp.models import openai_compat
from ecdna_exp.models.base import GenerationSettings, ModelConfigError, Request
from ecdna_exp.models.openai_compat import (
    DataUrlCache,
    OpenAICompatModel,
    encode_image,
    parse_retry_after,
    to_openai_messages,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / ".." / "shared" / "data"
PATCH_PATH = DATA_DIR / "ecseg_sample" / "images" / "1026.tif"
API_KEY = "sk-test-3f9a7c1e5b"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """Keep every test request on loopback whatever proxy the shell sets."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def make_model(base_url: str, **overrides) -> OpenAICompatModel:
    settings = {
        "name": "test_server",
        "base_url": base_url,
        "model": "test/vlm",
        "max_concurrency": 4,
        "timeout_s": 2.0,
        "max_retries": 2,
        "backoff_s": 0.005,
        "max_wait_s": 0.05,
        "max_images_per_request": 4,
        "send_top_k": True,
        "send_seed": True,
    }
    settings.update(overrides)
    return OpenAICompatModel(**settings)


def synthetic_image(seed: int, shape=(32, 48)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=shape + (3,), dtype=np.uint8)


def count_request(key: str, images: list[np.ndarray] | None = None, settings=None) -> Request:
    """Build a request whose conversation key (its last text) is ``key``."""
    images = [synthetic_image(0)] if images is None else images
    content = [{"type": "image", "image": image} for image in images]
    content.append({"type": "text", "text": key})
    return Request(
        image_id=f"img-{key}",
        messages=[{"role": "user", "content": content}],
        settings=settings or GenerationSettings(),
    )


def decode_data_url(url: str) -> np.ndarray:
    header, payload = url.split(",", 1)
    assert header == "data:image/png;base64"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(payload))))


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_answers_return_in_request_order():
    scripts = {f"q{i}": [CannedReply(answer_text=f"{i * 10}", delay_s=0.02 * (4 - i))] for i in range(5)}
    with FakeOpenAIServer(scripts) as server:
        model = make_model(server.base_url)
        responses = model.generate([count_request(f"q{i}") for i in range(5)])
        model.close()

    assert [r.answer_text for r in responses] == ["0", "10", "20", "30", "40"]
    assert all(r.ok for r in responses)
    assert all(r.latency_s > 0 for r in responses)
    assert {r.path for r in server.received} == {"/v1/chat/completions"}
    assert {r.payload["model"] for r in server.received} == {"test/vlm"}


def test_429_honours_retry_after_then_succeeds(caplog):
    scripts = {
        "busy": [CannedReply(status=429, body='{"error": "rate limited"}', headers={"Retry-After": "1"})]
    }
    scripts["busy"].append(CannedReply(answer_text="7"))
    caplog.set_level(logging.WARNING, logger="ecdna_exp")
    with FakeOpenAIServer(scripts) as server:
        model = make_model(server.base_url, max_wait_s=5.0)
        start = time.perf_counter()
        [response] = model.generate([count_request("busy")])
        elapsed_s = time.perf_counter() - start

    assert response.answer_text == "7"
    assert server.calls("busy") == 2
    assert 1.0 <= elapsed_s < 3.0
    assert response.latency_s >= 1.0
    retry_logs = [r.getMessage() for r in caplog.records if "retry 1 of 2" in r.getMessage()]
    assert len(retry_logs) == 1
    assert "HTTP 429" in retry_logs[0]
    assert "img-busy" in retry_logs[0]
    assert "in 1.00 s" in retry_logs[0]


def test_retry_after_capped_by_max_wait():
    scripts = {"busy": [CannedReply(status=429, headers={"Retry-After": "30"}), CannedReply(answer_text="2")]}
    with FakeOpenAIServer(scripts) as server:
        model = make_model(server.base_url, max_wait_s=0.05)
        start = time.perf_counter()
        [response] = model.generate([count_request("busy")])

    assert response.answer_text == "2"
    assert time.perf_counter() - start < 1.0


def test_repeated_500_gives_error_others_fine():
    scripts = {"broken": [CannedReply(status=500, body='{"message": "upstream exploded"}')]}
    with FakeOpenAIServer(scripts) as server:
        model = make_model(server.base_url, max_retries=2)
        responses = model.generate([count_request("a"), count_request("broken"), count_request("b")])

    assert server.calls("broken") == 3
    assert server.calls("a") == 1
    assert responses[0].answer_text == "3"
    assert responses[2].answer_text == "3"
    failed = responses[1]
    assert failed.answer_text is None
    assert not failed.ok
    assert "HTTP 500" in failed.error
    assert "upstream exploded" in failed.error
    assert "gave up after 3 attempts" in failed.error


def test_400_is_not_retried():
    scripts = {"bad": [CannedReply(status=400, body='{"message": "top_k is not a valid field"}')]}
    with FakeOpenAIServer(scripts) as server:
        model = make_model(server.base_url, max_retries=3)
        [response] = model.generate([count_request("bad")])

    assert server.calls("bad") == 1
    assert response.answer_text is None
    assert "HTTP 400" in response.error
    assert "top_k is not a valid field" in response.error
    assert "not retried" in response.error


def test_404_is_not_retried():
    with FakeOpenAIServer({"gone": [CannedReply(status=404, body="no such model")]}) as server:
        model = make_model(server.base_url, max_retries=3)
        [response] = model.generate([count_request("gone")])

    assert server.calls("gone") == 1
    assert "HTTP 404: no such model" in response.error


def test_slow_reply_times_out_and_is_retried():
    scripts = {"slow": [CannedReply(answer_text="9", delay_s=0.6)]}
    with FakeOpenAIServer(scripts) as server:
        model = make_model(server.base_url, timeout_s=0.15, max_retries=1)
        start = time.perf_counter()
        responses = model.generate([count_request("slow"), count_request("fast")])
        elapsed_s = time.perf_counter() - start

    assert server.calls("slow") == 2
    assert responses[0].answer_text is None
    assert "timed out after 0.15 s" in responses[0].error
    assert "gave up after 2 attempts" in responses[0].error
    assert responses[1].answer_text == "3"
    assert elapsed_s < 1.0


def test_refused_connection_is_retried_then_recorded():
    model = make_model(f"http://127.0.0.1:{free_loopback_port()}/v1", max_retries=1)
    [response] = model.generate([count_request("q")])

    assert response.answer_text is None
    assert "connection failed (ConnectError" in response.error
    assert "gave up after 2 attempts" in response.error


def test_reply_without_choices_is_an_error():
    with FakeOpenAIServer({"odd": [CannedReply(body='{"object": "list"}')]}) as server:
        model = make_model(server.base_url)
        [response] = model.generate([count_request("odd")])

    assert server.calls("odd") == 1
    assert response.answer_text is None
    assert "without a chat completion" in response.error


def test_images_arrive_as_png_data_urls():
    patch = load_image(PATCH_PATH)
    example = synthetic_image(5)
    request = Request(
        image_id="1026",
        messages=[
            {"role": "system", "content": "Count ecDNA."},
            {
                "role": "user",
                "content": [{"type": "image", "image": example}, {"type": "text", "text": "How many?"}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "4"}]},
            {
                "role": "user",
                "content": [{"type": "image", "image": patch}, {"type": "text", "text": "How many?"}],
            },
        ],
    )
    with FakeOpenAIServer() as server:
        model = make_model(server.base_url)
        [response] = model.generate([request])

    assert response.ok
    messages = server.received[0].payload["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"] == "Count ecDNA."
    assert messages[2]["content"] == "4"
    assert [part["type"] for part in messages[3]["content"]] == ["image_url", "text"]
    assert messages[3]["content"][1]["text"] == "How many?"
    first_pixels = decode_data_url(messages[1]["content"][0]["image_url"]["url"])
    query_pixels = decode_data_url(messages[3]["content"][0]["image_url"]["url"])
    assert patch.shape == (256, 256, 3)
    np.testing.assert_array_equal(first_pixels, example)
    np.testing.assert_array_equal(query_pixels, patch)


def test_jpeg_format_sets_mime_type():
    messages = [{"role": "user", "content": [{"type": "image", "image": synthetic_image(1)}]}]
    [converted] = to_openai_messages(messages, encode=DataUrlCache("jpeg"))

    assert converted["content"][0]["image_url"]["url"].startswith("data:image/jpeg;base64,/9j/")


def test_non_rgb_image_is_rejected():
    messages = [{"role": "user", "content": [{"type": "image", "image": np.zeros((8, 8), dtype=np.uint8)}]}]
    with pytest.raises(ValueError, match=r"expected an \(H, W, 3\) uint8 image, got shape \(8, 8\)"):
        to_openai_messages(messages)


def test_api_key_sent_as_bearer_never_logged(monkeypatch, caplog):
    monkeypatch.setenv("ECDNA_TEST_API_KEY", API_KEY)
    caplog.set_level(logging.DEBUG)
    scripts = {
        "flaky": [CannedReply(status=503, body="overloaded"), CannedReply(answer_text="5")],
        "echo": [CannedReply(status=401, body=f'{{"error": "key {API_KEY} is revoked"}}')],
    }
    with FakeOpenAIServer(scripts) as server:
        model = make_model(server.base_url, api_key_env="ECDNA_TEST_API_KEY")
        responses = model.generate([count_request("flaky"), count_request("echo")])
        described = repr(model.describe())
        model.close()

    assert {r.headers["Authorization"] for r in server.received} == {f"Bearer {API_KEY}"}
    assert responses[0].answer_text == "5"
    assert "key *** is revoked" in responses[1].error
    assert API_KEY not in responses[1].error
    assert API_KEY not in described
    assert "ECDNA_TEST_API_KEY" not in described
    assert any("retry 1 of 2" in r.getMessage() for r in caplog.records)
    for record in caplog.records:
        assert API_KEY not in record.getMessage()
    assert API_KEY not in caplog.text


def test_missing_api_key_variable_raises(monkeypatch):
    monkeypatch.delenv("ECDNA_TEST_API_KEY", raising=False)
    with pytest.raises(ModelConfigError, match="environment variable ECDNA_TEST_API_KEY"):
        make_model("http://127.0.0.1:9/v1", api_key_env="ECDNA_TEST_API_KEY")


def test_empty_api_key_variable_raises(monkeypatch):
    monkeypatch.setenv("ECDNA_TEST_API_KEY", "")
    with pytest.raises(ModelConfigError, match="not set or empty"):
        make_model("http://127.0.0.1:9/v1", api_key_env="ECDNA_TEST_API_KEY")


def test_no_key_sends_no_authorization():
    with FakeOpenAIServer() as server:
        model = make_model(server.base_url, api_key_env=None)
        model.generate([count_request("q")])

    assert "Authorization" not in server.received[0].headers


def test_greedy_and_sampled_payloads():
    with FakeOpenAIServer() as server:
        model = make_model(server.base_url)
        greedy = GenerationSettings(temperature=0.0, top_p=0.9, top_k=20, max_new_tokens=16, seed=7)
        sampled = GenerationSettings(temperature=0.7, top_p=0.9, top_k=20, max_new_tokens=32, seed=8)
        model.generate([count_request("greedy", settings=greedy), count_request("sampled", settings=sampled)])

    payloads = {r.key: r.payload for r in server.received}
    greedy_fields = {k: v for k, v in payloads["greedy"].items() if k != "messages"}
    sampled_fields = {k: v for k, v in payloads["sampled"].items() if k != "messages"}
    assert greedy_fields == {"model": "test/vlm", "max_tokens": 16, "temperature": 0, "seed": 7}
    assert sampled_fields == {
        "model": "test/vlm",
        "max_tokens": 32,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 20,
        "seed": 8,
    }
    assert greedy_fields == model.payload_settings(greedy)


def test_payload_without_top_k_or_seed():
    model = make_model("http://127.0.0.1:9/v1", send_top_k=False, send_seed=False)
    fields = model.payload_settings(GenerationSettings(temperature=0.7, top_p=0.95, top_k=20, seed=3))

    assert fields == {"model": "test/vlm", "max_tokens": 64, "temperature": 0.7, "top_p": 0.95}


def test_top_k_zero_sent_as_vllm_disabled():
    model = make_model("http://127.0.0.1:9/v1")
    fields = model.payload_settings(GenerationSettings(temperature=1.0, top_k=0))

    assert fields["top_k"] == -1


def test_too_many_images_raise_before_sending():
    with FakeOpenAIServer() as server:
        model = make_model(server.base_url, max_images_per_request=2)
        three_images = [synthetic_image(i) for i in range(3)]
        with pytest.raises(ModelConfigError) as raised:
            model.generate([count_request("ok"), count_request("many", images=three_images)])

    message = str(raised.value)
    assert "3 images per request (shots + 1)" in message
    assert "limit of 2" in message
    assert "at most 1" in message
    assert "--limit-mm-per-prompt" in message
    assert server.received == []


def test_check_image_budget():
    model = make_model("http://127.0.0.1:9/v1", max_images_per_request=5)
    model.check_image_budget(5)
    with pytest.raises(ModelConfigError, match="6 images per request"):
        model.check_image_budget(6)
    make_model("http://127.0.0.1:9/v1", max_images_per_request=None).check_image_budget(100)


def test_concurrency_is_bounded():
    scripts = {f"q{i}": [CannedReply(delay_s=0.1)] for i in range(6)}
    with FakeOpenAIServer(scripts) as server:
        model = make_model(server.base_url, max_concurrency=2)
        start = time.perf_counter()
        responses = model.generate([count_request(f"q{i}") for i in range(6)])
        elapsed_s = time.perf_counter() - start

    assert all(r.answer_text == "3" for r in responses)
    assert server.max_in_flight == 2
    assert elapsed_s >= 0.3


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("base_url", "127.0.0.1:8000/v1", "base_url must start with http"),
        ("image_format", "tiff", "image_format must be one of"),
        ("max_concurrency", 0, "max_concurrency must be at least 1"),
        ("max_retries", -1, "max_retries must be at least 0"),
        ("timeout_s", 0, "timeout_s must be positive"),
        ("max_images_per_request", 0, "max_images_per_request must be at least 1"),
    ],
)
def test_invalid_settings_raise(key, value, fragment):
    overrides = {"base_url": "http://127.0.0.1:9/v1", key: value}
    with pytest.raises(ModelConfigError, match=fragment):
        make_model(**overrides)


def test_parse_retry_after_forms():
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    in_five_s = format_datetime(now + timedelta(seconds=5), usegmt=True)
    five_s_ago = format_datetime(now - timedelta(seconds=5), usegmt=True)

    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(in_five_s, now=now) == 5.0
    assert parse_retry_after(five_s_ago, now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None


def test_openai_yaml_runs_against_local_server():
    cfg = OmegaConf.load(REPO_ROOT / "conf" / "model" / "openai.yaml")
    with FakeOpenAIServer({"q": [CannedReply(answer_text="12")]}) as server:
        cfg.base_url = server.base_url
        model = hydra.utils.instantiate(cfg)
        [response] = model.generate([count_request("q")])
        model.close()

    assert isinstance(model, OpenAICompatModel)
    assert response.answer_text == "12"
    assert server.received[0].payload["model"] == "Qwen/Qwen2-VL-7B-Instruct"
    assert "Authorization" not in server.received[0].headers


def test_pixtral_yaml_builds_without_sending(monkeypatch):
    monkeypatch.setenv("MISTRAL_API_KEY", API_KEY)
    cfg = OmegaConf.load(REPO_ROOT / "conf" / "model" / "pixtral_large_api.yaml")
    model = hydra.utils.instantiate(cfg)
    fields = model.payload_settings(GenerationSettings(temperature=0.7, top_p=0.9, top_k=40, seed=11))
    description = model.describe()
    model.close()

    assert description["base_url"] == "https://api.mistral.ai/v1"
    assert description["model"] == "pixtral-large-latest"
    assert API_KEY not in repr(description)
    assert "top_k" not in fields
    assert fields["random_seed"] == 11
    assert "seed" not in fields


def test_pixtral_yaml_without_key_raises(monkeypatch):
    monkeypatch.delenv("MISTRAL_API_KEY", raising=False)
    cfg = OmegaConf.load(REPO_ROOT / "conf" / "model" / "pixtral_large_api.yaml")
    with pytest.raises(hydra.errors.InstantiationException) as raised:
        hydra.utils.instantiate(cfg)

    assert isinstance(raised.value.__cause__, ModelConfigError)
    assert "MISTRAL_API_KEY" in str(raised.value.__cause__)


def test_data_url_cache_reuses_encodings():
    cache = DataUrlCache("png", max_entries=2)
    first, second, third = synthetic_image(1), synthetic_image(2), synthetic_image(3)

    assert cache(first) == encode_image(first)
    assert cache(first.copy()) == cache(first)
    assert len(cache) == 1
    cache(second)
    cache(third)
    assert len(cache) == 2
    assert decode_data_url(cache(second)).shape == (32, 48, 3)


def test_shared_example_encoded_once(monkeypatch):
    encoded_shapes = []

    def counting_encode(image, image_format="png"):
        encoded_shapes.append(image.shape)
        return encode_image(image, image_format)

    monkeypatch.setattr(openai_compat, "encode_image", counting_encode)
    example = synthetic_image(9, shape=(16, 16))
    requests = [count_request(f"q{i}", images=[example, synthetic_image(20 + i)]) for i in range(3)]
    with FakeOpenAIServer() as server:
        model = make_model(server.base_url)
        model.generate(requests)

    assert encoded_shapes.count((16, 16, 3)) == 1
    assert encoded_shapes.count((32, 48, 3)) == 3
    example_urls = {r.payload["messages"][0]["content"][0]["image_url"]["url"] for r in server.received}
    assert len(example_urls) == 1
    np.testing.assert_array_equal(decode_data_url(example_urls.pop()), example)
