import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ecdna_exp.cache import AnswerCache
from ecdna_exp.data import Dataset, Sample
from ecdna_exp.experiment import IMAGE_ERROR, MODEL_ERROR, Experiment, ExperimentSettings, trial_seed
from ecdna_exp.models.base import CountingModel, ModelConfigError, Response
from ecdna_exp.prompts import PromptSpec


class ScriptedModel(CountingModel):
    """Answers from a table keyed by image id and turn; records every request."""

    def __init__(self, answers, batch_size=2, max_images=None):
        self.name = "scripted"
        self.batch_size = batch_size
        self.max_images_per_request = max_images
        self.answers = answers
        self.requests = []

    def generate(self, requests):
        self.requests.extend(requests)
        responses = []
        for request in requests:
            turn = sum(1 for m in request.messages if m["role"] == "assistant") - self.n_examples
            answer = self.answers[request.image_id]
            answer = answer[turn] if isinstance(answer, list) else answer
            if answer is None:
                responses.append(Response(answer_text=None, error="CUDA out of memory"))
            else:
                responses.append(Response(answer_text=answer, latency_s=0.1))
        return responses

    n_examples = 0


def _dataset(tmp_path, counts):
    samples = [Sample(f"img{i}", {"num_nuclei": 0, "num_chromosomes": 0, "num_ecDNA": c},
                      rgb=np.full((8, 8, 3), i, dtype=np.uint8)) for i, c in enumerate(counts)]
    pool = [Sample(f"pool{i}", {"num_nuclei": 0, "num_chromosomes": 0, "num_ecDNA": c},
                   rgb=np.full((8, 8, 3), 100 + i, dtype=np.uint8)) for i, c in enumerate([0, 1, 9])]
    return Dataset("test", "memory", samples, pool, "digest")


def _run(tmp_path, model, dataset, prompt=None, cache=None, **settings):
    prompt = prompt or PromptSpec("baseline", ("How many ecDNA?",))
    experiment = Experiment(model, dataset, prompt, ExperimentSettings(bootstrap_resamples=50, **settings),
                            cache or AnswerCache(None), tmp_path / "out")
    return experiment.run()


def test_failures_recorded_per_image(tmp_path):
    dataset = _dataset(tmp_path, [3, 5, 0])
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"garbage")
    dataset.samples.append(Sample("broken", {"num_nuclei": 0, "num_chromosomes": 0, "num_ecDNA": 4}, path=broken))
    model = ScriptedModel({"img0": "3", "img1": None, "img2": "I cannot tell."})
    result = _run(tmp_path, model, dataset)
    rows = result.predictions.set_index("image_id")
    assert rows.loc["img0", "count_pred"] == 3
    assert rows.loc["img1", "parse_status"] == MODEL_ERROR
    assert rows.loc["img1", "error"] == "CUDA out of memory"
    assert rows.loc["img2", "parse_status"] == "refusal"
    assert rows.loc["broken", "parse_status"] == IMAGE_ERROR
    assert "cannot read image" in rows.loc["broken", "error"]
    assert result.metrics["n"] == 4
    assert result.metrics["coverage"] == 0.25
    partial = pd.read_csv(tmp_path / "out" / "predictions.partial.csv")
    assert sorted(partial["image_id"]) == ["broken", "img0", "img1", "img2"]


def test_multilayer_keeps_every_step(tmp_path):
    dataset = _dataset(tmp_path, [2, 7])
    prompt = PromptSpec("multilayer", ("Describe.", "Locate.", "Answer."))
    model = ScriptedModel({"img0": ["two blobs", "top left", "Count: 2\nConfidence: 0.8"],
                           "img1": ["many dots", "everywhere", "Count: 6\nConfidence: low"]})
    result = _run(tmp_path, model, dataset, prompt=prompt)
    rows = result.predictions.set_index("image_id")
    assert rows.loc["img0", "step1_answer"] == "two blobs"
    assert rows.loc["img0", "step2_answer"] == "top left"
    assert rows.loc["img1", "count_pred"] == 6
    assert rows.loc["img0", "confidence"] == pytest.approx(0.8)
    assert rows.loc["img1", "confidence"] == pytest.approx(0.3)
    last_request = [r for r in model.requests if r.image_id == "img1"][-1]
    texts = [part["text"] for m in last_request.messages for part in m["content"] if part["type"] == "text"]
    assert texts == ["Describe.", "many dots", "Locate.", "everywhere", "Answer."]


def test_shots_send_pool_images_never_the_query(tmp_path):
    dataset = _dataset(tmp_path, [4, 4, 4])
    model = ScriptedModel({f"img{i}": "4" for i in range(3)})
    model.n_examples = 3
    result = _run(tmp_path, model, dataset, shots=3)
    assert result.example_ids == ["pool0", "pool1", "pool2"]
    for request in model.requests:
        images = request.images()
        assert len(images) == 4
        assert [int(image[0, 0, 0]) for image in images[:3]] == [100, 101, 102]
        assert int(images[3][0, 0, 0]) == int(request.image_id[-1])


def test_trials_use_distinct_seeds_and_aggregate(tmp_path):
    dataset = _dataset(tmp_path, [5])
    model = ScriptedModel({"img0": "5"})
    result = _run(tmp_path, model, dataset, trials=3, temperature=0.7)
    seeds = [r.settings.seed for r in model.requests]
    assert seeds == [trial_seed(0, t) for t in range(3)]
    assert len(set(seeds)) == 3
    assert len(result.trial_metrics) == 3
    assert result.trial_predictions.shape[0] == 3


def test_cache_serves_repeat_run(tmp_path):
    dataset = _dataset(tmp_path, [1, 2, 3])
    cache = AnswerCache(tmp_path / "cache.sqlite")
    first = ScriptedModel({"img0": "1", "img1": "2", "img2": "3"})
    _run(tmp_path, first, dataset, cache=cache)
    second = ScriptedModel({"img0": "9", "img1": "9", "img2": "9"})
    result = _run(tmp_path, second, dataset, cache=cache)
    assert second.requests == []
    assert result.predictions["count_pred"].tolist() == [1, 2, 3]


def test_image_limit_checked_before_any_request(tmp_path):
    dataset = _dataset(tmp_path, [1])
    model = ScriptedModel({"img0": "1"}, max_images=2)
    with pytest.raises(ModelConfigError, match="at most 2"):
        _run(tmp_path, model, dataset, shots=3)
    assert model.requests == []


def test_corrupt_example_image_fails_clearly(tmp_path):
    dataset = _dataset(tmp_path, [1])
    bad = tmp_path / "bad.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(bad)
    bad.write_bytes(bad.read_bytes()[:10])
    dataset.pool = [Sample("bad", {"num_nuclei": 0, "num_chromosomes": 0, "num_ecDNA": 1}, path=bad)]
    with pytest.raises(ValueError, match="cannot read image"):
        _run(tmp_path, ScriptedModel({"img0": "1"}), dataset, shots=1)


def test_partial_csv_keeps_carriage_returns(tmp_path):
    dataset = _dataset(tmp_path, [2, 3])
    model = ScriptedModel({"img0": "2\rsecond line", "img1": "3"})
    _run(tmp_path, model, dataset)
    partial = pd.read_csv(tmp_path / "out" / "predictions.partial.csv")
    assert partial.shape[0] == 2
    assert partial.loc[0, "answer_text"] == "2\rsecond line"
