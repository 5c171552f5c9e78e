"""Tests of the transformers backend on tiny random checkpoints built offline in a temporary folder.

The checkpoints use the official Qwen2-VL, MiniCPM-V 4.6 and Pixtral classes and
are loaded through the product's own loader, as real checkpoints are.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import hydra.errors
import hydra.utils
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ecdna_exp.imaging import load_image
from ecdna_exp.models.base import GenerationSettings, ModelConfigError, Request
from ecdna_exp.models.hf import TransformersVLM
from ecdna_exp.models.hf_checkpoint import PIXTRAL_TRANSFORMERS_REPO, resolve_checkpoint
from ecdna_exp.models.hf_decoding import NonFiniteLogitsCheck, NonFiniteLogitsError
from ecdna_exp.models.hf_inputs import split_images
from ecdna_exp.models.tiny import FAMILIES, TINY_CONTEXT_LENGTH, build_tiny_models, main

REPO_ROOT = Path(__file__).resolve().parents[1]
QUESTION = "How many ecDNA are in this image? Answer with a single number."
NAN_MESSAGE = "probability tensor contains either `inf`, `nan` or element < 0"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run the tiny models on one thread: on 2 shared cores a second thread made them 5-10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-models")
    build_tiny_models(out)
    return out


@pytest.fixture(scope="session")
def patches(sample_dir) -> list[np.ndarray]:
    paths = sorted((sample_dir / "images").glob("*.tif"))[:6]
    return [load_image(path) for path in paths]


@pytest.fixture(scope="session")
def loaded(tiny_dir) -> dict[str, TransformersVLM]:
    return {
        family: TransformersVLM(name=family, checkpoint=f"tiny/{family}", checkpoint_dir=str(tiny_dir))
        for family in FAMILIES
    }


@pytest.fixture
def model(request, loaded) -> TransformersVLM:
    """One loaded tiny model, reset to batch size 1 with its real ``generate``."""
    vlm = loaded[request.param]
    vlm.batch_size = 1
    vlm.__dict__.pop("model_generate_patch", None)
    return vlm


def make_request(
    patches, query: int, shots: int = 0, settings: GenerationSettings | None = None, text: str = QUESTION
) -> Request:
    """Build a conversation of ``shots`` answered examples followed by the query image."""
    messages = []
    for shot in range(shots):
        example = patches[(query + shot + 1) % len(patches)]
        messages.append(
            {"role": "user", "content": [{"type": "image", "image": example}, {"type": "text", "text": text}]}
        )
        messages.append({"role": "assistant", "content": [{"type": "text", "text": str(shot + 2)}]})
    messages.append(
        {
            "role": "user",
            "content": [{"type": "image", "image": patches[query]}, {"type": "text", "text": text}],
        }
    )
    settings = settings or GenerationSettings(max_new_tokens=4)
    return Request(image_id=f"patch-{query}-{shots}", messages=messages, settings=settings)


def capture_generate(monkeypatch, vlm: TransformersVLM) -> list[dict]:
    """Record the keyword arguments of every ``generate()`` call and still run it."""
    calls = []
    original = vlm.model.generate

    def recording_generate(**kwargs):
        calls.append(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(vlm.model, "generate", recording_generate)
    return calls


ALL_FAMILIES = pytest.mark.parametrize("model", FAMILIES, indirect=True)


@ALL_FAMILIES
def test_family_answers_image_request(model, patches):
    responses = model.generate([make_request(patches, 0)])

    assert len(responses) == 1
    assert responses[0].error is None
    assert isinstance(responses[0].answer_text, str)
    assert responses[0].latency_s > 0
    assert model.describe()["weights"].endswith(model.name)
    assert model.describe()["dtype"] == "float32"
    assert model.context_limit == TINY_CONTEXT_LENGTH


@ALL_FAMILIES
def test_prompt_rendered_by_chat_template(model, patches):
    inputs, lengths, image_counts = model.encode([make_request(patches, 0, shots=2)])
    prompt = model.processor.tokenizer.decode(inputs["input_ids"][0])

    assert image_counts == [3]
    assert lengths == [inputs["input_ids"].shape[1]]
    assert prompt.count(QUESTION) == 3
    assert prompt.index("2") < prompt.rindex(QUESTION)
    assert inputs["input_ids"].eq(model.processor.image_token_id).sum() > 0


def test_qwen_max_pixels_sets_image_tokens(tiny_dir, patches):
    default = TransformersVLM(name="qwen", checkpoint="tiny/qwen", checkpoint_dir=str(tiny_dir))
    larger = TransformersVLM(
        name="qwen", checkpoint="tiny/qwen", checkpoint_dir=str(tiny_dir), max_pixels=112 * 112
    )
    request = make_request(patches, 0)

    default_inputs, _, _ = default.encode([request])
    larger_inputs, _, _ = larger.encode([request])
    image_token_id = default.processor.image_token_id

    # One token per 28 x 28 pixels: 56 x 56 gives 4, 112 x 112 gives 16.
    assert default_inputs["input_ids"].eq(image_token_id).sum().item() == 4
    assert larger_inputs["input_ids"].eq(image_token_id).sum().item() == 16
    assert larger.describe()["max_pixels"] == 112 * 112


def test_max_pixels_rejected_for_pixtral(tiny_dir):
    with pytest.raises(ModelConfigError, match="image_processor_kwargs"):
        TransformersVLM(
            name="pixtral", checkpoint="tiny/pixtral", checkpoint_dir=str(tiny_dir), max_pixels=4096
        )


@ALL_FAMILIES
def test_batched_greedy_matches_single(model, patches):
    requests = [
        make_request(patches, 0),
        make_request(patches, 1, shots=2),
        make_request(patches, 2),
        make_request(patches, 3, shots=2),
        make_request(patches, 4, text="Count the ecDNA."),
    ]
    single = [response.answer_text for response in model.generate(requests)]

    model.batch_size = 4
    inputs, lengths, image_counts = model.encode(requests[:4])
    batched = [response.answer_text for response in model.generate(requests)]

    assert image_counts == [1, 3, 1, 3]
    assert inputs["attention_mask"][0, 0].item() == 0, "shorter prompts must be padded on the left"
    assert inputs["attention_mask"][:, -1].all()
    assert lengths[0] < lengths[1]
    assert batched == single


@pytest.mark.parametrize("model", ["qwen", "pixtral"], indirect=True)
def test_answer_depends_on_image(model, patches):
    answers = {
        response.answer_text for response in model.generate([make_request(patches, i) for i in range(6)])
    }

    assert len(answers) > 1


def test_tiny_qwen_ships_greedy_sampling_defaults(tiny_dir):
    saved = json.loads((tiny_dir / "qwen" / "generation_config.json").read_text())

    assert saved["do_sample"] is True
    assert saved["top_k"] == 1


@pytest.mark.parametrize("model", ["qwen"], indirect=True)
def test_temperature_zero_is_greedy(model, patches, monkeypatch):
    calls = capture_generate(monkeypatch, model)
    settings = GenerationSettings(temperature=0.0, top_p=0.9, top_k=20, max_new_tokens=5, seed=3)

    model.generate([make_request(patches, 0, settings=settings)])
    config = calls[0]["generation_config"]
    effective, _ = model.model._prepare_generation_config(config)

    assert config.do_sample is False
    assert config.temperature is None
    assert config.top_p is None
    assert config.top_k is None
    assert config.max_new_tokens == 5
    assert effective.do_sample is False
    assert effective.num_beams == 1
    assert effective.repetition_penalty == 1.0
    assert model.last_generate_kwargs == {"seed": 3, "max_new_tokens": 5, "do_sample": False, "num_beams": 1}


@pytest.mark.parametrize("model", ["qwen"], indirect=True)
@pytest.mark.parametrize("top_k", [20, 0])
def test_positive_temperature_samples_with_settings(model, patches, monkeypatch, top_k):
    calls = capture_generate(monkeypatch, model)
    settings = GenerationSettings(temperature=0.7, top_p=0.9, top_k=top_k, max_new_tokens=5, seed=11)

    model.generate([make_request(patches, 0, settings=settings)])
    effective, _ = model.model._prepare_generation_config(calls[0]["generation_config"])

    # The checkpoint ships do_sample=True, top_k=1, top_p=0.001, temperature=0.01, repetition_penalty=1.05.
    assert effective.do_sample is True
    assert effective.temperature == 0.7
    assert effective.top_p == 0.9
    assert effective.top_k == top_k
    assert effective.repetition_penalty == 1.0
    assert model.last_generate_kwargs["temperature"] == 0.7
    assert model.last_generate_kwargs["top_k"] == top_k
    assert model.last_generate_kwargs["seed"] == 11


@pytest.mark.parametrize("model", ["pixtral"], indirect=True)
def test_sampling_reproducible_from_seed(model, patches):
    def sample(seed: int) -> str:
        settings = GenerationSettings(temperature=3.0, top_p=1.0, top_k=0, max_new_tokens=8, seed=seed)
        return model.generate([make_request(patches, 0, settings=settings)])[0].answer_text

    first = sample(5)
    answers = {sample(seed) for seed in range(6)}

    assert sample(5) == first
    assert len(answers) > 1


@pytest.mark.parametrize("model", ["qwen"], indirect=True)
def test_mixed_temperatures_never_share_a_call(model, patches, monkeypatch):
    calls = capture_generate(monkeypatch, model)
    model.batch_size = 8
    greedy = GenerationSettings(temperature=0.0, max_new_tokens=4)
    sampled = GenerationSettings(temperature=0.7, top_p=0.9, top_k=20, max_new_tokens=4)
    requests = [make_request(patches, i, settings=greedy if i % 2 else sampled) for i in range(4)]

    responses = model.generate(requests)

    assert len(calls) == 2
    assert sorted(call["input_ids"].shape[0] for call in calls) == [2, 2]
    assert all(response.ok for response in responses)


@pytest.mark.parametrize("model", ["pixtral"], indirect=True)
def test_token_budget_rejects_long_prompt(model, patches, monkeypatch):
    calls = capture_generate(monkeypatch, model)
    long_text = " ".join(["Count every small round DAPI focus outside the chromosomes."] * 60)
    request = make_request(patches, 0, shots=3, text=long_text)
    _, lengths, _ = model.encode([request])

    with pytest.raises(ModelConfigError) as raised:
        model.generate([request])
    message = str(raised.value)

    assert lengths[0] > TINY_CONTEXT_LENGTH
    assert f"{lengths[0]} prompt tokens (4 images)" in message
    assert f"context length of {TINY_CONTEXT_LENGTH} tokens" in message
    assert "fewer shots" in message
    assert "max_new_tokens" in message
    assert calls == []


@pytest.mark.parametrize("model", ["minicpm"], indirect=True)
def test_token_budget_boundary(model, patches, monkeypatch):
    calls = []

    def one_token_generate(**kwargs):
        calls.append(kwargs)
        return torch.cat([kwargs["input_ids"], kwargs["input_ids"][:, -1:]], dim=1)

    monkeypatch.setattr(model.model, "generate", one_token_generate)
    request = make_request(patches, 0, shots=3)
    _, lengths, _ = model.encode([request])
    room = TINY_CONTEXT_LENGTH - lengths[0]

    fitting = GenerationSettings(max_new_tokens=room)
    model.generate([Request(request.image_id, request.messages, fitting)])
    over = GenerationSettings(max_new_tokens=room + 1)
    with pytest.raises(ModelConfigError, match=f"= {TINY_CONTEXT_LENGTH + 1}, over"):
        model.generate([Request(request.image_id, request.messages, over)])

    assert len(calls) == 1
    assert calls[0]["generation_config"].max_new_tokens == room


def test_offline_missing_hub_id_fails_fast(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    started = time.perf_counter()

    with pytest.raises(ModelConfigError) as raised:
        TransformersVLM(name="qwen", checkpoint="Qwen/Qwen2-VL-7B-Instruct")
    message = str(raised.value)

    assert time.perf_counter() - started < 2.0
    assert "'Qwen/Qwen2-VL-7B-Instruct'" in message
    assert "HF_HUB_OFFLINE" in message
    assert "hf download Qwen/Qwen2-VL-7B-Instruct" in message
    assert "checkpoint_dir" in message


def test_unreachable_hub_fails_fast(tmp_path, monkeypatch):
    import huggingface_hub.constants

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    started = time.perf_counter()

    with pytest.raises(ModelConfigError) as raised:
        TransformersVLM(name="pixtral", checkpoint="mistral-community/pixtral-12b")
    message = str(raised.value)

    assert time.perf_counter() - started < 5.0
    assert "'mistral-community/pixtral-12b'" in message
    assert "could not be reached" in message
    assert "'pixtral'" in message


def fill_hub_cache(cache: Path, repo_id: str, source: Path, commit: str = "a" * 40) -> Path:
    """Lay out ``source``'s files as a cached snapshot of ``repo_id``, the way huggingface_hub stores them."""
    repo_folder = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in source.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
    (repo_folder / "refs").mkdir()
    (repo_folder / "refs" / "main").write_text(commit)
    return snapshot


def test_cached_hub_id_loads_offline(tiny_dir, tmp_path, monkeypatch, patches):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    fill_hub_cache(tmp_path, "someone/tiny-pixtral", tiny_dir / "pixtral")

    vlm = TransformersVLM(name="pixtral", checkpoint="someone/tiny-pixtral")

    assert vlm.describe()["weights"] == "someone/tiny-pixtral@" + "a" * 40
    assert vlm.generate([make_request(patches, 0)])[0].ok


def write_mistral_format(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.json").write_text(json.dumps({"dim": 5120, "n_layers": 40, "vision_encoder": {}}))
    (folder / "consolidated.safetensors").write_bytes(b"")
    (folder / "tekken.json").write_text("{}")
    return folder


def test_mistral_format_folder_rejected(tmp_path):
    write_mistral_format(tmp_path / "pixtral")

    with pytest.raises(ModelConfigError) as by_dir:
        TransformersVLM(name="pixtral", checkpoint="mistralai/Pixtral-12B-2409", checkpoint_dir=str(tmp_path))
    with pytest.raises(ModelConfigError) as by_path:
        TransformersVLM(name="pixtral", checkpoint=str(tmp_path / "pixtral"))

    for raised in (by_dir, by_path):
        assert "Mistral format" in str(raised.value)
        assert PIXTRAL_TRANSFORMERS_REPO in str(raised.value)
        assert "params.json" in str(raised.value)


def test_mistral_format_cached_repo_rejected(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    source = write_mistral_format(tmp_path / "mistral")
    fill_hub_cache(tmp_path / "cache", "mistralai/Pixtral-12B-2409", source)

    with pytest.raises(ModelConfigError, match=PIXTRAL_TRANSFORMERS_REPO):
        resolve_checkpoint("mistralai/Pixtral-12B-2409")


def test_missing_checkpoint_dir_entry_named(tmp_path):
    with pytest.raises(ModelConfigError) as raised:
        TransformersVLM(name="qwen", checkpoint="Qwen/Qwen2-VL-7B-Instruct", checkpoint_dir=str(tmp_path))

    assert str(tmp_path / "qwen") in str(raised.value)
    assert "python -m ecdna_exp.models.tiny" in str(raised.value)


def inject_fault(monkeypatch, vlm: TransformersVLM, fault: BaseException, failing_call: int) -> list[int]:
    """Make batched calls fail with ``fault``, and the ``failing_call``-th single-request call too."""
    original = vlm.model.generate
    batch_sizes = []

    def faulty_generate(**kwargs):
        batch_sizes.append(kwargs["input_ids"].shape[0])
        single_calls = sum(1 for size in batch_sizes if size == 1)
        if batch_sizes[-1] > 1 or single_calls == failing_call:
            raise fault
        return original(**kwargs)

    monkeypatch.setattr(vlm.model, "generate", faulty_generate)
    return batch_sizes


@pytest.mark.parametrize("model", ["qwen"], indirect=True)
@pytest.mark.parametrize(
    "fault",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError(NAN_MESSAGE),
    ],
    ids=["oom", "nan"],
)
def test_fault_fails_only_its_request(model, patches, monkeypatch, fault):
    requests = [make_request(patches, i) for i in range(3)]
    expected = [response.answer_text for response in model.generate(requests)]
    model.batch_size = 3
    batch_sizes = inject_fault(monkeypatch, model, fault, failing_call=2)

    responses = model.generate(requests)

    assert batch_sizes == [3, 1, 1, 1]
    assert responses[1].answer_text is None
    assert type(fault).__name__ in responses[1].error
    assert responses[0].answer_text == expected[0]
    assert responses[2].answer_text == expected[2]
    assert responses[0].error is None
    assert responses[2].error is None


@pytest.mark.parametrize("model", ["qwen"], indirect=True)
def test_other_errors_propagate(model, patches, monkeypatch):
    def broken_generate(**kwargs):
        raise ValueError("invalid input shape")

    monkeypatch.setattr(model.model, "generate", broken_generate)

    with pytest.raises(ValueError, match="invalid input shape"):
        model.generate([make_request(patches, 0)])


def test_non_finite_logits_check():
    check = NonFiniteLogitsCheck()
    input_ids = torch.zeros((2, 3), dtype=torch.long)
    masked = torch.tensor([[0.5, -float("inf")], [1.0, 2.0]])

    assert check(input_ids, masked) is masked
    with pytest.raises(NonFiniteLogitsError):
        check(input_ids, torch.tensor([[0.5, float("nan")], [1.0, 2.0]]))
    with pytest.raises(NonFiniteLogitsError):
        check(input_ids, torch.tensor([[0.5, float("inf")], [1.0, 2.0]]))


def test_split_images_keeps_order():
    first = np.zeros((4, 5, 3), dtype=np.uint8)
    second = np.full((6, 7, 3), 200, dtype=np.uint8)
    messages = [
        {"role": "system", "content": "You count ecDNA."},
        {"role": "user", "content": [{"type": "image", "image": first}, {"type": "text", "text": "a"}]},
        {"role": "user", "content": [{"type": "text", "text": "b"}, {"type": "image", "image": second}]},
    ]

    template_messages, images = split_images(messages)

    assert [image.size for image in images] == [(5, 4), (7, 6)]
    assert np.asarray(images[1])[0, 0].tolist() == [200, 200, 200]
    assert template_messages[1]["content"][0] == {"type": "image"}
    assert template_messages[2]["content"][1] == {"type": "image"}
    assert template_messages[0]["content"] == "You count ecDNA."
    assert "image" in messages[1]["content"][0]


@pytest.mark.parametrize("config_name", FAMILIES)
def test_model_yaml_instantiates_tiny_checkpoint(config_name, tiny_dir, patches):
    model_config = OmegaConf.load(REPO_ROOT / "conf" / "model" / f"{config_name}.yaml")
    root = OmegaConf.create({"checkpoint_dir": str(tiny_dir), "model": model_config})

    vlm = hydra.utils.instantiate(root.model)

    assert isinstance(vlm, TransformersVLM)
    assert vlm.describe()["weights"] == str((tiny_dir / config_name).resolve())
    assert vlm.generate([make_request(patches, 0)])[0].ok


def test_minicpm_v2_requires_trust_remote_code():
    model_config = OmegaConf.load(REPO_ROOT / "conf" / "model" / "minicpm_v2.yaml")
    root = OmegaConf.create({"checkpoint_dir": None, "model": model_config})

    with pytest.raises(hydra.errors.InstantiationException) as untrusted:
        hydra.utils.instantiate(root.model)
    with pytest.raises(hydra.errors.InstantiationException) as unpinned:
        hydra.utils.instantiate(root.model, trust_remote_code=True)

    assert isinstance(untrusted.value.__cause__, ModelConfigError)
    assert "model.trust_remote_code=true" in str(untrusted.value.__cause__)
    assert isinstance(unpinned.value.__cause__, ModelConfigError)
    assert "model.revision" in str(unpinned.value.__cause__)


def test_tiny_cli_builds_identical_checkpoints(tmp_path):
    assert main(["--out", str(tmp_path / "a"), "--families", "pixtral"]) == 0
    assert main(["--out", str(tmp_path / "b"), "--families", "pixtral"]) == 0

    first = (tmp_path / "a" / "pixtral" / "model.safetensors").read_bytes()
    second = (tmp_path / "b" / "pixtral" / "model.safetensors").read_bytes()
    config = json.loads((tmp_path / "a" / "pixtral" / "config.json").read_text())

    assert first == second
    assert config["architectures"] == ["LlavaForConditionalGeneration"]
    assert config["vision_config"]["model_type"] == "pixtral"
    assert config["text_config"]["model_type"] == "mistral"
    assert not (tmp_path / "a" / "qwen").exists()


def test_benchmark_script_prints_table(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_models", REPO_ROOT / "benchmarks" / "bench_models.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()

    exit_code = bench.main(
        ["--families", "pixtral", "--batch-sizes", "1", "2", "--images", "2", "--repeats", "1"]
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny pixtral")]
    torch.set_num_threads(threads)

    assert exit_code == 0
    assert [line.split("|")[2].strip() for line in lines] == ["1", "2"]
    assert all(line.split("|")[-2].strip() == "0" for line in lines)
