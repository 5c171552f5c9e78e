import numpy as np

from ecdna_exp.cache import AnswerCache, cache_key
from ecdna_exp.models.base import GenerationSettings, Response
from ecdna_exp.prompts import PromptSpec, build_opening

SPEC = PromptSpec(name="test", turns=("How many ecDNA?",))


def test_key_changes_with_every_input():
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    other_image = image.copy()
    other_image[0, 0, 2] = 1
    base = cache_key({"checkpoint": "a"}, build_opening(SPEC, image), GenerationSettings())
    assert base == cache_key({"checkpoint": "a"}, build_opening(SPEC, image.copy()), GenerationSettings())
    variants = [
        cache_key({"checkpoint": "b"}, build_opening(SPEC, image), GenerationSettings()),
        cache_key({"checkpoint": "a"}, build_opening(SPEC, other_image), GenerationSettings()),
        cache_key({"checkpoint": "a"}, build_opening(SPEC, image), GenerationSettings(temperature=0.7)),
        cache_key({"checkpoint": "a"}, build_opening(SPEC, image), GenerationSettings(temperature=0.7, seed=1)),
        cache_key({"checkpoint": "a"}, build_opening(PromptSpec("p", ("Count ecDNA.",)), image), GenerationSettings()),
    ]
    assert len({base, *variants}) == 6


def test_greedy_key_ignores_seed():
    messages = build_opening(SPEC, np.zeros((8, 8, 3), dtype=np.uint8))
    assert cache_key({}, messages, GenerationSettings(seed=1)) == cache_key({}, messages, GenerationSettings(seed=2))


def test_answers_survive_reopening(tmp_path):
    path = tmp_path / "answers.sqlite"
    cache = AnswerCache(path)
    points = np.array([[1.25, 2.5], [10.0, 3.0]])
    cache.put_many([("k1", Response("12", 0.5)), ("k2", Response("none seen", 0.25, points=points)),
                    ("k3", Response(None, 0.1, error="timed out"))])
    cache.close()
    reopened = AnswerCache(path)
    first = reopened.get("k1")
    assert (first.answer_text, first.latency_s, first.points) == ("12", 0.5, None)
    second = reopened.get("k2")
    assert second.answer_text == "none seen"
    np.testing.assert_array_equal(second.points, points)
    assert reopened.get("k3") is None
    assert (reopened.hits, reopened.misses) == (2, 1)


def test_disabled_cache_stores_nothing():
    cache = AnswerCache(None)
    cache.put_many([("k", Response("1", 0.1))])
    assert cache.get("k") is None
