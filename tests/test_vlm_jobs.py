"""Whole jobs with tiny random VLMs loaded through the normal checkpoint path."""

import json
from pathlib import Path

import pandas as pd
import pytest
from test_task import run_cli, runs_of

from ecdna_exp.models.tiny import build_tiny_models


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-models")
    build_tiny_models(root)
    return root


@pytest.mark.slow
def test_three_vlms_in_one_multirun(tmp_path, tiny_dir, sample_dir):
    run_cli(tmp_path, "-m", "model=qwen,minicpm,pixtral", f"checkpoint_dir={tiny_dir}", "dataset=ecseg",
            f"dataset.root={sample_dir}", "dataset.limit=3", "generation.max_new_tokens=6")
    client, parents, children = runs_of(tmp_path)
    assert len(parents) == 1
    assert sorted(c.data.params["model.name"] for c in children) == ["minicpm", "pixtral", "qwen"]
    for child in children:
        assert child.info.status == "FINISHED"
        predictions = pd.read_csv(client.download_artifacts(child.info.run_id, "predictions.csv"))
        assert len(predictions) == 3
        assert predictions["answer_text"].notna().all()
        assert child.data.params["effective_generation.do_sample"] == "False"


@pytest.mark.slow
def test_prompt_shot_sweep_logs_trials(tmp_path, tiny_dir, sample_dir):
    run_cli(tmp_path, "-m", "model=qwen", f"checkpoint_dir={tiny_dir}", "prompt=baseline,pathologist,multilayer",
            "shots=0,3", "trials=3", "aggregation=median", "temperature=0.7", "dataset=ecseg",
            f"dataset.root={sample_dir}", "dataset.limit=2", "generation.max_new_tokens=6")
    client, _, children = runs_of(tmp_path)
    assert len(children) == 6
    for child in children:
        assert child.info.status == "FINISHED"
        assert {"mae", "rmse", "coverage", "trial_mae_mean"} <= set(child.data.metrics)
        assert [m.step for m in client.get_metric_history(child.info.run_id, "trial_coverage")] == [0, 1, 2]
        trials = pd.read_csv(client.download_artifacts(child.info.run_id, "trial_predictions.csv"))
        assert sorted(trials["trial"].unique()) == [0, 1, 2]
        details_path = client.download_artifacts(child.info.run_id, "run_details.json")
        details = json.loads(Path(details_path).read_text())
        assert len(details["example_ids"]) == int(child.data.params["shots"])
        if child.data.params["prompt.name"] == "multilayer":
            predictions = pd.read_csv(client.download_artifacts(child.info.run_id, "predictions.csv"))
            assert {"step1_answer", "step2_answer", "step3_answer"} <= set(predictions.columns)


@pytest.mark.slow
def test_tool_and_point_prompts_run(tmp_path, tiny_dir, sample_dir):
    run_cli(tmp_path, "-m", "model=qwen", f"checkpoint_dir={tiny_dir}", "prompt=tool_informed,point_count",
            "dataset=ecseg", f"dataset.root={sample_dir}", "dataset.limit=2", "generation.max_new_tokens=6")
    client, _, children = runs_of(tmp_path)
    by_prompt = {c.data.params["prompt.name"]: c for c in children}
    assert set(by_prompt) == {"tool_informed", "point_count"}
    for child in children:
        assert child.info.status == "FINISHED"
    tool_rows = pd.read_csv(client.download_artifacts(by_prompt["tool_informed"].info.run_id, "trial_predictions.csv"))
    assert tool_rows["tool_candidate_count"].notna().all()
    assert by_prompt["point_count"].data.params["prompt.points"] == "pixels"
