import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from ecdna_exp.prompts import (
    PromptSpec,
    build_opening,
    continue_conversation,
    describe_messages,
    select_examples,
)
from ecdna_exp.task import CONFIG_DIR

GOLDEN_DIR = Path(__file__).parent / "golden"
PROMPTS = ["baseline", "pathologist", "ai_agent", "researcher", "multilayer", "tool_informed", "point_count"]


def _prompt(name: str) -> PromptSpec:
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"prompt={name}"])
    return PromptSpec.from_config(cfg.prompt)


def _conversation(spec: PromptSpec) -> list[dict[str, str]]:
    """Render a 2-shot conversation, with fixed answers for the later turns of a multi-turn prompt."""
    query = np.zeros((256, 256, 3), dtype=np.uint8)
    examples = [(np.zeros((256, 256, 3), dtype=np.uint8), 0), (np.zeros((256, 256, 3), dtype=np.uint8), 12)]
    fill = {"height": 256, "width": 256, "candidate_count": 7}
    tool_images = [np.zeros((256, 256, 3), dtype=np.uint8)] if spec.tool else []
    messages = build_opening(spec, query, examples, fill, tool_images)
    for step, turn in enumerate(spec.turns[1:], start=1):
        messages = continue_conversation(messages, f"<answer to step {step}>", turn)
    return describe_messages(messages)


@pytest.mark.parametrize("name", PROMPTS)
def test_prompt_rendering_matches_golden(name):
    golden = json.loads((GOLDEN_DIR / f"prompt_{name}.json").read_text())
    assert _conversation(_prompt(name)) == golden


def test_examples_carry_their_images_and_counts():
    spec = _prompt("baseline")
    example_image = np.full((8, 8, 3), 7, dtype=np.uint8)
    query = np.full((8, 8, 3), 9, dtype=np.uint8)
    messages = build_opening(spec, query, [(example_image, 5)])
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[0]["content"][0]["image"] is example_image
    assert messages[1]["content"][0]["text"] == "5"
    assert messages[2]["content"][0]["image"] is query


def test_cover_strategy_spans_zero_one_many():
    pool_counts = [0, 5, 1, 30, 2, 0, 12, 1, 57]
    chosen = select_examples(pool_counts, 3, "cover", seed=0)
    assert [pool_counts[i] for i in chosen][:2] == [0, 1]
    assert pool_counts[chosen[2]] >= 12
    assert len(set(chosen)) == 3


def test_random_strategy_is_seeded_and_distinct():
    pool_counts = list(range(20))
    first = select_examples(pool_counts, 5, "random", seed=1)
    assert first == select_examples(pool_counts, 5, "random", seed=1)
    assert first != select_examples(pool_counts, 5, "random", seed=2)
    assert len(set(first)) == 5


def test_more_shots_than_pool_rejected():
    with pytest.raises(ValueError, match="exceeds the 2 images"):
        select_examples([1, 2], 3, "random", seed=0)
    with pytest.raises(ValueError, match="invalid shot strategy"):
        select_examples([1, 2], 1, "closest", seed=0)
    assert select_examples([1, 2], 0, "cover", seed=0) == []
