"""Tests of the Optuna sweeper, the launcher presets and sweep resumption.

The fast tests check the search-space translation, study resumption and the
composed presets in-process. The slow ones start ``python -m ecdna_exp -m``
as subprocesses on synthetic images with a fresh MLflow store under
``tmp_path``, kill some of them with SIGKILL and start them again.
"""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from ecdna_exp.config import register_resolvers
from hydra_plugins.ecdna_optuna_sweeper._report import history_figure, trials_table
from hydra_plugins.ecdna_optuna_sweeper._search import _trial_value, open_study
from hydra_plugins.ecdna_optuna_sweeper._space import format_override, parse_search_space

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(REPO_ROOT / "conf")
STUDY = "ecdna-classical"


# --------------------------------------------------------------------------- search space and presets


def _space(*overrides: str):
    return parse_search_space(list(overrides), OverridesParser.create())


def test_preset_search_space():
    register_resolvers()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["sweep=optuna", "model=classical"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.ecdna_optuna_sweeper.optuna_sweeper.EcdnaOptunaSweeper"
    assert sweeper.study_name == STUDY
    assert sweeper.storage is None
    assert sweeper.direction == "minimize"
    space = _space(*(f"{key}={value}" for key, value in sweeper.params.items()))
    assert space.distributions["temperature"] == FloatDistribution(0.0, 1.5)
    assert space.distributions["shots"] == CategoricalDistribution([0, 1, 3, 5])
    assert space.fixed_overrides == []


def test_range_and_interval_tags():
    space = _space(
        "top_k=range(10,60,20)",
        "lr=tag(log, interval(0.001, 1))",
        "n=tag(int, interval(1, 8))",
        "step=range(0.0, 1.0, 0.25)",
    )
    assert space.distributions["top_k"] == IntDistribution(10, 50, step=20)
    assert space.distributions["lr"] == FloatDistribution(0.001, 1.0, log=True)
    assert space.distributions["n"] == IntDistribution(1, 8)
    assert space.distributions["step"] == FloatDistribution(0.0, 0.75, step=0.25)


def test_later_override_replaces_param():
    space = _space("temperature=interval(0, 1.5)", "shots=choice(0, 1, 3, 5)", "shots=3", "+prompt_note=x")
    assert list(space.distributions) == ["temperature"]
    assert space.fixed_overrides == ["shots=3", "+prompt_note=x"]
    assert space.trial_overrides({"temperature": 0.25}) == ["shots=3", "+prompt_note=x", "temperature=0.25"]


def test_unknown_interval_tag_rejected():
    with pytest.raises(ValueError, match="interval tags of x"):
        _space("x=tag(exp, interval(0, 1))")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.1, "k=0.1"),
        (1e-05, "k=1e-05"),
        (3, "k=3"),
        (True, "k=true"),
        (None, "k=null"),
        ("pathologist", "k=pathologist"),
        ("1", "k='1'"),
        ("a,b", "k='a,b'"),
        ("null", "k='null'"),
    ],
)
def test_format_override_round_trip(value, expected):
    line = format_override("k", value)
    assert line == expected
    parsed = OverridesParser.create().parse_override(line).value()
    assert parsed == value
    assert type(parsed) is type(value)


def test_slurm_and_parallel_presets():
    register_resolvers()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        slurm = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True).hydra.launcher
        parallel = compose("config", overrides=["sweep=parallel"], return_hydra_config=True).hydra.launcher
    assert slurm._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert slurm.gpus_per_node == 1
    assert slurm.cpus_per_task == 8
    assert slurm.mem_gb == 64
    assert slurm.timeout_min == 240
    assert parallel._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert parallel.n_jobs == 4


# --------------------------------------------------------------------------- study handling


def _sweeper(seed: int = 0, direction: str = "minimize"):
    config = OmegaConf.create(
        {"hydra": {"job": {"config": {"override_dirname": {"exclude_keys": ["tracking.dir"]}}}}}
    )
    return SimpleNamespace(study_name="s", direction=direction, seed=seed, n_startup_trials=10, config=config)


def test_open_study_fails_stale_running_trial(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    space = _space("temperature=interval(0, 1.5)", "model=classical", "tracking.dir=/a")
    study = open_study(_sweeper(), storage, space)
    study.tell(study.ask(space.distributions), 0.5)
    study.ask(space.distributions)  # left RUNNING, as by a killed search

    resumed = open_study(
        _sweeper(), storage, _space("temperature=interval(0, 1.5)", "model=classical", "tracking.dir=/b")
    )
    states = [trial.state for trial in resumed.get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.FAIL]


def test_open_study_rejects_other_settings(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    space = _space("temperature=interval(0, 1.5)", "model=classical")
    study = open_study(_sweeper(), storage, space)
    study.tell(study.ask(space.distributions), 0.5)
    with pytest.raises(ValueError, match="Resume it with the same settings"):
        open_study(_sweeper(), storage, _space("temperature=interval(0, 1.5)", "model=constant"))
    with pytest.raises(ValueError, match="Resume it with the same settings"):
        open_study(_sweeper(), storage, _space("temperature=interval(0, 1.0)", "model=classical"))
    with pytest.raises(ValueError, match="is set to minimize"):
        open_study(_sweeper(direction="maximize"), storage, space)


def test_resumed_sampler_draws_new_values(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    space = _space("temperature=interval(0, 1.5)")
    study = open_study(_sweeper(), storage, space)
    first = study.ask(space.distributions)
    study.tell(first, 1.0)
    resumed = open_study(_sweeper(), storage, space)
    second = resumed.ask(space.distributions)
    assert second.params["temperature"] != first.params["temperature"]

    again = open_study(_sweeper(), f"sqlite:///{tmp_path / 'other.db'}", space).ask(space.distributions)
    assert again.params["temperature"] == first.params["temperature"]


def _job_return(status: JobStatus, value) -> JobReturn:
    result = JobReturn(
        status=status, hydra_cfg=OmegaConf.create({"hydra": {"runtime": {"output_dir": "/out/3"}}})
    )
    result.return_value = value
    return result


def test_trial_value_of_job_results():
    assert _trial_value(_job_return(JobStatus.COMPLETED, 0.75)) == (0.75, None)
    assert _trial_value(_job_return(JobStatus.COMPLETED, 2)) == (2.0, None)
    assert _trial_value(_job_return(JobStatus.COMPLETED, math.nan)) == (
        None,
        "job returned nan; its log is in /out/3",
    )
    assert _trial_value(_job_return(JobStatus.COMPLETED, math.inf))[0] is None
    assert _trial_value(_job_return(JobStatus.COMPLETED, "0.5")) == (None, "job returned '0.5', not a number")
    assert _trial_value(_job_return(JobStatus.COMPLETED, True))[0] is None
    failed = _trial_value(_job_return(JobStatus.FAILED, RuntimeError("no GPU")))
    assert failed == (None, "job raised RuntimeError: no GPU")


def test_history_figure_and_table():
    study = optuna.create_study(study_name="h", direction="minimize")
    for value in (3.0, None, 1.0, 2.0):
        trial = study.ask({"temperature": FloatDistribution(0, 1)})
        if value is None:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, value)
    figure = history_figure(study)
    axes = figure.axes[0]
    objective, best, failed = axes.get_lines()
    assert list(objective.get_xdata()) == [0, 2, 3]
    assert list(objective.get_ydata()) == [3.0, 1.0, 2.0]
    assert list(best.get_ydata()) == [3.0, 1.0, 1.0]
    assert list(failed.get_xdata()) == [1]
    assert axes.get_title() == "h: 3 complete, 1 failed"

    table = trials_table(study)
    assert list(table["state"]) == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert "params_temperature" in table
    assert (table["duration_s"].dropna() >= 0).all()


# --------------------------------------------------------------------------- subprocess sweeps


def _env() -> dict[str, str]:
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false", PYTHONUNBUFFERED="1"
    )
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _command(tmp_path: Path, *overrides: str, sweep_dir: str | None = "sweep") -> list[str]:
    command = [sys.executable, "-m", "ecdna_exp", "-m", f"tracking.dir={tmp_path / 'mlruns'}", *overrides]
    if sweep_dir is not None:
        command.append(f"hydra.sweep.dir={tmp_path / sweep_dir}")
    return command


def _run(tmp_path: Path, command: list[str], timeout: float = 600) -> tuple[str, float]:
    """Run a sweep to its end; return its output and wall time in seconds."""
    started = time.perf_counter()
    done = subprocess.run(
        command,
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stdout[-4000:]
    return done.stdout, elapsed


def _run_and_kill(tmp_path: Path, command: list[str], ready, log_name: str, timeout: float = 600) -> None:
    """Start a sweep, SIGKILL its process group as soon as ``ready()`` is true, and wait for it to end."""
    with open(tmp_path / log_name, "w") as log_file:
        process = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=_env(),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        try:
            while not ready():
                assert process.poll() is None, (
                    f"the sweep ended before the kill: {(tmp_path / log_name).read_text()}"
                )
                assert time.monotonic() < deadline, "the sweep never reached the kill point"
                time.sleep(0.1)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == -signal.SIGKILL


def _count_rows(database: Path, query: str) -> int:
    """Return the first column of ``query`` on an SQLite file, or 0 while the file or table is missing."""
    if not database.exists():
        return 0
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        return int(connection.execute(query).fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        connection.close()


def _trial_states(tmp_path: Path) -> dict[str, int]:
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}")
    states = pd.Series([trial.state.name for trial in study.get_trials()])
    return states.value_counts().to_dict()


def _client(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")


def _children(client, parent_run_id: str) -> list:
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")


def _parent_id(sweep_dir: Path) -> str:
    return (sweep_dir / "mlflow_parent_run_id").read_text().strip()


OPTUNA_CLASSICAL = ("sweep=optuna", "model=classical", "dataset.n_images=4")


@pytest.mark.slow
def test_optuna_resumes_after_sigkill(tmp_path):
    command = _command(tmp_path, *OPTUNA_CLASSICAL, "hydra.sweeper.n_trials=6")
    optuna_db = tmp_path / "mlruns" / "optuna.db"
    complete_query = "SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'"
    _run_and_kill(tmp_path, command, lambda: _count_rows(optuna_db, complete_query) >= 3, "killed.log")

    at_kill = _trial_states(tmp_path)
    complete_at_kill = at_kill.get("COMPLETE", 0)
    assert 3 <= complete_at_kill < 6
    running_at_kill = at_kill.get("RUNNING", 0)

    output, _ = _run(tmp_path, command)
    assert _count_rows(optuna_db, "SELECT COUNT(*) FROM studies") == 1
    states = _trial_states(tmp_path)
    assert states.get("COMPLETE") == 6
    assert states.get("RUNNING", 0) == 0
    assert states.get("FAIL", 0) == running_at_kill
    assert output.count("was left RUNNING by an interrupted search") == running_at_kill

    client = _client(tmp_path)
    parent_run_id = _parent_id(tmp_path / "sweep")
    children = _children(client, parent_run_id)
    assert len(children) == 6 - complete_at_kill
    assert {run.info.status for run in children} == {"FINISHED"}
    artifacts = {entry.path for entry in client.list_artifacts(parent_run_id, "optuna")}
    assert artifacts == {"optuna/history.png", "optuna/trials.csv"}
    trials = pd.read_csv(client.download_artifacts(parent_run_id, "optuna/trials.csv", str(tmp_path)))
    assert (trials["state"] == "COMPLETE").sum() == 6
    parent = client.get_run(parent_run_id).data
    assert parent.metrics["optuna_trials_complete"] == 6
    assert parent.metrics["best_objective"] == trials.loc[trials["state"] == "COMPLETE", "value"].min()
    assert {"best.temperature", "best.shots"} <= set(parent.params)
    best = OmegaConf.load(tmp_path / "sweep" / "optuna_best.yaml")
    assert best.best_value == parent.metrics["best_objective"]


def _constant_study(tmp_path: Path) -> optuna.Study:
    return optuna.load_study(
        study_name="ecdna-constant", storage=f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("continue_on_error", ["true", "false"])
def test_optuna_continues_after_failed_trials(tmp_path, continue_on_error):
    # model.value=-1 makes the constant model raise when it is built, inside the job's MLflow run.
    # With seed 0 the sampler draws -1 for trials 0, 1 and 3 and 2 for trials 2 and 4.
    command = _command(
        tmp_path,
        "sweep=optuna",
        "model=constant",
        "dataset.n_images=4",
        "temperature=0",
        "shots=0",
        "model.value=choice(2,-1)",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.max_failures=10",
        f"continue_on_error={continue_on_error}",
    )
    output, _ = _run(tmp_path, command)
    study = _constant_study(tmp_path)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(complete) == 2
    assert len(failed) >= 1
    assert {trial.params["model.value"] for trial in complete} == {2}
    assert {trial.params["model.value"] for trial in failed} == {-1}
    reason = (
        "job returned nan"
        if continue_on_error == "true"
        else "job raised ModelConfigError: cannot build model"
    )
    for trial in failed:
        assert trial.user_attrs["error"].startswith(reason)
    assert "best trial" in output

    client = _client(tmp_path)
    children = _children(client, _parent_id(tmp_path / "sweep"))
    statuses = pd.Series([run.info.status for run in children]).value_counts().to_dict()
    assert statuses == {"FINISHED": 2, "FAILED": len(failed)}


@pytest.mark.slow
def test_optuna_stops_after_max_failures(tmp_path):
    command = _command(
        tmp_path,
        "sweep=optuna",
        "model=constant",
        "dataset.n_images=4",
        "model.value=-1",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.max_failures=1",
    )
    output, _ = _run(tmp_path, command)
    states = [trial.state for trial in _constant_study(tmp_path).get_trials()]
    assert states == [TrialState.FAIL, TrialState.FAIL]
    assert (
        "stopped after 2 failed trials (hydra.sweeper.max_failures=1) with 0 of 2 trials complete" in output
    )
    assert "has no COMPLETE trial" in output


@pytest.mark.slow
def test_joblib_sweep_on_fresh_store(tmp_path):
    # The default sweep dir (${now:} and ${unique_suffix:}) is kept to check that workers resolve it alike.
    temperatures = "temperature=0,0.25,0.5,0.75"
    command = _command(
        tmp_path, "sweep=parallel", "model=classical", "dataset.n_images=2", temperatures, sweep_dir=None
    )
    output, _ = _run(tmp_path, command)
    assert "database is locked" not in output

    sweep_dirs = [path.parent for path in (tmp_path / "multirun").glob("*/*/mlflow_parent_run_id")]
    assert len(sweep_dirs) == 1
    assert sorted(path.name for path in sweep_dirs[0].iterdir() if path.is_dir()) == ["0", "1", "2", "3"]
    client = _client(tmp_path)
    children = _children(client, _parent_id(sweep_dirs[0]))
    assert len(children) == 4
    for run in children:
        assert run.info.status == "FINISHED"
        assert {"mae", "rmse", "coverage"} <= set(run.data.metrics)
    assert sorted(float(run.data.params["temperature"]) for run in children) == [0.0, 0.25, 0.5, 0.75]


def _cache_counts(client, parent_run_id: str) -> tuple[int, int]:
    children = _children(client, parent_run_id)
    hits = sum(int(run.data.metrics["cache_hits"]) for run in children)
    misses = sum(int(run.data.metrics["cache_misses"]) for run in children)
    return hits, misses


@pytest.mark.slow
def test_identical_sweep_served_from_cache(tmp_path):
    overrides = ("model=classical", "dataset.n_images=4", "temperature=0,0.5")
    _run(tmp_path, _command(tmp_path, *overrides, sweep_dir="first"))
    _run(tmp_path, _command(tmp_path, *overrides, sweep_dir="second"))
    client = _client(tmp_path)
    assert _cache_counts(client, _parent_id(tmp_path / "first")) == (0, 8)
    for run in _children(client, _parent_id(tmp_path / "second")):
        assert run.data.metrics["cache_hits"] == 4
        assert run.data.metrics["cache_misses"] == 0


@pytest.mark.slow
def test_killed_sweep_reuses_finished_answers(tmp_path):
    # One image per batch, so each answer is committed to the cache on its own.
    overrides = ("model=classical", "model.batch_size=1", "dataset.n_images=12", "temperature=0,0.5")
    command = _command(tmp_path, *overrides)
    cache_db = tmp_path / "mlruns" / "cache" / "answers.sqlite"
    count_query = "SELECT COUNT(*) FROM answers"
    _run_and_kill(tmp_path, command, lambda: _count_rows(cache_db, count_query) >= 3, "killed.log")
    answered_before_kill = _count_rows(cache_db, count_query)
    assert 3 <= answered_before_kill < 24

    _run(tmp_path, command)
    hits, misses = _cache_counts(_client(tmp_path), _parent_id(tmp_path / "sweep"))
    assert hits >= answered_before_kill
    assert hits + misses == 24
    assert _count_rows(cache_db, count_query) == 24


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    done = subprocess.run(
        [sys.executable, "-m", "ecdna_exp.models.tiny", "--out", str(out)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"tiny checkpoints could not be built: {done.stdout[-2000:]}")
    return out


@pytest.mark.slow
def test_tiny_vlm_sweep_cache_speedup(tmp_path, tiny_checkpoints, record_property):
    overrides = (
        "model=qwen",
        f"checkpoint_dir={tiny_checkpoints}",
        "dataset.n_images=8",
        "temperature=0,0.7",
    )
    _, first_wall_s = _run(tmp_path, _command(tmp_path, *overrides, sweep_dir="first"))
    _, second_wall_s = _run(tmp_path, _command(tmp_path, *overrides, sweep_dir="second"))

    client = _client(tmp_path)
    job_seconds = {}
    for name in ("first", "second"):
        children = _children(client, _parent_id(tmp_path / name))
        job_seconds[name] = sum((run.info.end_time - run.info.start_time) / 1000 for run in children)
    assert _cache_counts(client, _parent_id(tmp_path / "second")) == (16, 0)

    speedup = job_seconds["first"] / job_seconds["second"]
    report = (
        f"tiny qwen, 2 jobs x 8 images: jobs {job_seconds['first']:.1f} s -> {job_seconds['second']:.1f} s "
        f"({speedup:.1f}x), whole command {first_wall_s:.1f} s -> {second_wall_s:.1f} s"
    )
    print(report)
    record_property("tiny_vlm_cache_speedup", report)
    # Measured 12x to 13x on 2 CPU cores. The lower floor keeps a busy machine from failing the test.
    assert speedup >= 3
