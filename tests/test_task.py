"""Whole jobs through `python -m ecdna_exp`, as a user runs them."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_cli(tmp_path: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "ecdna_exp", *overrides, f"tracking.dir={tmp_path / 'mlruns'}",
               f"hydra.sweep.dir={tmp_path / 'multirun'}", f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=900, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def runs_of(tmp_path: Path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ecdna-counting")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("role") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


@pytest.mark.slow
def test_baselines_on_ecseg_sample(tmp_path, sample_dir):
    result = run_cli(tmp_path, "-m", "model=constant,classical", "dataset=ecseg", f"dataset.root={sample_dir}")
    assert "Results (2 runs" in result.stdout
    client, parents, children = runs_of(tmp_path)
    assert len(parents) == 1
    assert len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    mae = {}
    for child in children:
        assert child.info.status == "FINISHED"
        for key in ("mae", "rmse", "coverage", "mae_ci_low", "mae_ci_high", "skill", "objective"):
            assert key in child.data.metrics, key
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"predictions.csv", "predictions.json", "scatter.png", "residuals.png", "config.yaml"} <= artifacts
        predictions = pd.read_csv(client.download_artifacts(child.info.run_id, "predictions.csv"))
        assert len(predictions) == 141
        assert child.data.params["dataset.root"] == str(sample_dir)
        mae[child.data.params["model.name"]] = child.data.metrics["mae"]
    classical = next(c for c in children if c.data.params["model.name"] == "classical")
    assert "pearson_r" in classical.data.metrics
    assert mae["classical"] < mae["constant"]
    parent_artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"comparison.csv", "mae_rmse.png", "scatter_grid.png"} <= parent_artifacts
    assert client.get_run(parents[0].info.run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_failing_job_does_not_stop_sweep(tmp_path):
    result = run_cli(tmp_path, "-m", "model=constant", "model.value=-1,3", "dataset.n_images=6")
    output = result.stdout + result.stderr
    assert "job 'dataset.n_images=6,model.value=-1,model=constant' failed" in output
    assert "constant value must be >= 0, got -1" in output
    _, parents, children = runs_of(tmp_path)
    status = {c.data.params["model.value"]: c.info.status for c in children}
    assert status == {"-1": "FAILED", "3": "FINISHED"}
    assert parents[0].data.tags["children_failed"] == "1"


@pytest.mark.slow
def test_single_run_returns_objective_and_logs(tmp_path):
    run_cli(tmp_path, "model=classical", "dataset.n_images=8", "trials=2", "temperature=0.5")
    client, parents, _ = runs_of(tmp_path)
    assert parents == []
    (run,) = client.search_runs([client.get_experiment_by_name("ecdna-counting").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["trials"] == "2"
    assert run.data.metrics["n"] == 8
    history = client.get_metric_history(run.info.run_id, "trial_mae")
    assert [m.step for m in history] == [0, 1]


@pytest.mark.slow
def test_invalid_config_value_fails_clearly(tmp_path):
    result = run_cli(tmp_path, "temperature=-0.5", check=False)
    assert result.returncode != 0
    assert "temperature must be >= 0" in result.stdout + result.stderr


def test_orphaned_runs_marked_killed(tmp_path):
    from ecdna_exp.tracking import TrackingStore, mark_orphaned_runs, process_tag

    store = TrackingStore(tmp_path / "mlruns")
    experiment_id = store.ensure_experiment("orphans")
    host = process_tag().rpartition(":")[0]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    orphan = store.client.create_run(experiment_id, tags={"process": f"{host}:{dead.stdout.strip()}"})
    alive = store.client.create_run(experiment_id, tags={"process": process_tag()})
    elsewhere = store.client.create_run(experiment_id, tags={"process": "other-host:1"})
    assert mark_orphaned_runs(store.client, experiment_id) == 1
    assert store.client.get_run(orphan.info.run_id).info.status == "KILLED"
    assert store.client.get_run(alive.info.run_id).info.status == "RUNNING"
    assert store.client.get_run(elsewhere.info.run_id).info.status == "RUNNING"
