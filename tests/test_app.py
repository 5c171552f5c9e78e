"""Tests of the Gradio app: view functions on real patches and runs, and two flows in headless Chromium."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from browser import (
    CHROMIUM,
    chromium_page,
    open_worst_prediction,
    run_baseline_sweep,
    running_app,
    upload_and_ask,
)
from fake_openai_server import CannedReply, FakeOpenAIServer
from omegaconf import OmegaConf
from PIL import Image

from ecdna_exp.app.__main__ import parse_args
from ecdna_exp.app.ask_view import ask_model, steps_markdown
from ecdna_exp.app.drawing import MARKER_COLOUR, display_scale, draw_detections, label_overlay
from ecdna_exp.app.inspect_view import ImageChoice, choose_upload, inspect_image, show_choice
from ecdna_exp.app.run_store import RunReadError, RunStore, RunView, load_run_image, sort_by_error
from ecdna_exp.app.runs_view import select_prediction
from ecdna_exp.app.settings import AppSettings, DatasetIndex, ModelCache, compose_config, config_names
from ecdna_exp.ground_truth import CLASS_COLOURS, ECDNA, load_label_map
from ecdna_exp.imaging import dapi_channel, load_image
from ecdna_exp.models.baselines import detect_ecdna
from ecdna_exp.synthetic import SyntheticStyle, generate_patch

REPO_ROOT = Path(__file__).resolve().parents[1]
PATCH_IDS = ("1026", "1790", "162")
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(),
                                    reason=f"{CHROMIUM} not found; install it with apt-get install chromium")


def classical_count(image_path: Path) -> int:
    """Count with detect_ecdna and the rules of conf/model/classical.yaml, without the app."""
    rules = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "model" / "classical.yaml"))
    rules = {k: v for k, v in rules.items() if k not in ("_target_", "name", "batch_size")}
    return len(detect_ecdna(dapi_channel(load_image(image_path)), **rules))


@pytest.fixture(scope="module")
def index(sample_dir) -> DatasetIndex:
    return DatasetIndex(sample_dir)


@pytest.fixture(scope="module")
def settings(sample_dir) -> AppSettings:
    return AppSettings(dataset_root=sample_dir, tracking_dir=Path("/nonexistent-store"))


@pytest.fixture(scope="module")
def cache():
    cache = ModelCache()
    yield cache
    cache.close()


@pytest.fixture(scope="module")
def counts_csv(sample_dir) -> pd.DataFrame:
    frame = pd.read_csv(sample_dir / "counts.csv", dtype={"image": str})
    return frame.assign(image_id=frame["image"].str.replace(r"\.\w+$", "", regex=True)).set_index("image_id")


@pytest.fixture(scope="session")
def baseline_sweep(sample_dir, tmp_path_factory) -> Path:
    """An MLflow store with one constant and one classical run on 12 patches."""
    root = tmp_path_factory.mktemp("app-store")
    run_baseline_sweep(sample_dir, root / "mlruns", root / "multirun")
    return root / "mlruns"


def test_config_names_list_conf_files():
    assert {"classical", "constant", "openai"} <= set(config_names("model"))
    assert {"baseline", "multilayer"} <= set(config_names("prompt"))


@pytest.mark.parametrize("image_id", PATCH_IDS)
def test_inspect_counts_equal_counts_csv(index, settings, cache, counts_csv, image_id):
    sample = index.samples[image_id]
    inspection = inspect_image(ImageChoice(image_id, sample.path, sample), cache, settings)
    row = counts_csv.loc[image_id]
    assert inspection.counts_true["num_ecDNA"] == row["num_ecDNA"]
    assert inspection.counts_true["num_chromosomes"] == row["num_chromosomes"]
    assert inspection.counts_true["num_nuclei"] == row["num_nuclei"]
    assert inspection.count_classical == classical_count(sample.path)
    assert inspection.overlay.shape == inspection.rgb.shape


def test_inspect_views_match_the_patch(index, settings, cache):
    sample = index.samples["1026"]
    inspection = inspect_image(ImageChoice("1026", sample.path, sample), cache, settings)
    rgb = load_image(sample.path)
    assert np.array_equal(inspection.rgb, rgb)
    assert np.array_equal(inspection.dapi[..., 0], rgb[..., 2])
    scale = display_scale(rgb.shape)
    assert inspection.detections.shape == (256 * scale, 256 * scale, 3)


def test_label_overlay_blends_class_colours(sample_dir):
    label_map = load_label_map(sample_dir / "labels" / "1026.png")
    rgb = load_image(sample_dir / "images" / "1026.tif")
    overlay = label_overlay(rgb, label_map, alpha=1.0)
    background = label_map == 0
    assert np.array_equal(overlay[background], rgb[background])
    ecdna_pixels = overlay[label_map == ECDNA]
    assert len(ecdna_pixels) > 0
    assert (ecdna_pixels == CLASS_COLOURS[ECDNA]).all()


def test_draw_detections_circles_each_centroid():
    rgb = np.zeros((64, 64, 3), dtype=np.uint8)
    drawn = draw_detections(rgb, np.array([[20.0, 40.0]]), radius=4)
    scale = display_scale(rgb.shape)
    assert scale == 8
    marked = np.argwhere((drawn == MARKER_COLOUR).all(axis=2))
    centre = (np.array([20.0, 40.0]) + 0.5) * scale
    distances = np.hypot(*(marked - centre).T)
    assert distances.min() >= 4 * scale - scale - 1
    assert distances.max() <= 4 * scale + 1
    assert not (drawn[int(centre[0]), int(centre[1])] == MARKER_COLOUR).all()


def test_unreadable_upload_returns_message(tmp_path, index, settings, cache):
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a TIFF at all")
    with pytest.warns(UserWarning, match="cannot read image"):
        outputs = show_choice(choose_upload(index, broken), cache, settings)
    assert outputs[:4] == (None, None, None, None)
    assert outputs[4].startswith("**Error:**")
    assert "cannot read image" in outputs[4]


def test_upload_copy_gets_ground_truth(tmp_path, index, sample_dir):
    copy = tmp_path / "1026.tif"
    shutil.copy(sample_dir / "images" / "1026.tif", copy)
    assert choose_upload(index, copy).sample is index.samples["1026"]

    other = tmp_path / "renamed" / "1026.tif"
    other.parent.mkdir()
    shutil.copy(sample_dir / "images" / "1790.tif", other)
    assert choose_upload(index, other).sample is None


def test_upload_without_ground_truth_notes_it(tmp_path, index, settings, cache, sample_dir):
    upload = tmp_path / "spread.png"
    Image.open(sample_dir / "images" / "1790.tif").save(upload)
    inspection = inspect_image(choose_upload(index, upload), cache, settings)
    assert inspection.counts_true is None
    assert inspection.overlay is None
    assert "No ground truth" in inspection.notes[0]
    assert inspection.count_classical == classical_count(sample_dir / "images" / "1790.tif")


def test_patch_without_labels_uses_counts_csv(tmp_path, settings, cache, sample_dir):
    (tmp_path / "images").mkdir()
    shutil.copy(sample_dir / "images" / "162.tif", tmp_path / "images" / "162.tif")
    (tmp_path / "counts.csv").write_text(",image,num_nuclei,num_chromosomes,num_ecDNA\n0,162.tif,1,5,7\n")
    sample = DatasetIndex(tmp_path).samples["162"]
    inspection = inspect_image(ImageChoice("162", sample.path, sample), cache, settings)
    assert inspection.counts_true == {"num_nuclei": 1, "num_chromosomes": 5, "num_ecDNA": 7}
    assert inspection.overlay is None
    assert "counts CSV" in inspection.notes[0]


def test_model_cache_reuses_and_evicts(settings):
    cache = ModelCache(max_models=1)
    classical_cfg = compose_config(settings, ["model=classical"]).model
    first = cache.get(classical_cfg)
    assert cache.get(compose_config(settings, ["model=classical"]).model) is first
    assert cache.builds == 1
    cache.get(compose_config(settings, ["model=constant"]).model)
    assert cache.get(classical_cfg) is not first
    assert cache.builds == 3
    cache.close()


def _ask(index, settings, cache, image_id="1026", **options):
    sample = index.samples[image_id]
    arguments = {"model_name": "classical", "prompt_name": "baseline", "shots": 0, "temperature": 0.0,
                 "view": "rgb", **options}
    choice = ImageChoice(image_id, sample.path, sample)
    return list(ask_model(choice, settings=settings, index=index, cache=cache, **arguments))


def test_ask_classical_multilayer_keeps_steps(index, settings, cache, sample_dir):
    states = _ask(index, settings, cache, prompt_name="multilayer")
    final = states[-1]
    expected = classical_count(sample_dir / "images" / "1026.tif")
    assert final.done
    assert final.step_answers == (str(expected),) * 3
    assert final.count == expected
    assert final.parse_status == "exact"
    assert [len(s.step_answers) for s in states[1:]] == [0, 1, 2, 3]
    assert steps_markdown(final).count("**Turn") == 3


def test_ask_classical_returns_its_detections(index, settings, cache, sample_dir):
    final = _ask(index, settings, cache, image_id="1790")[-1]
    rgb = load_image(sample_dir / "images" / "1790.tif")
    rules = {k: v for k, v in compose_config(settings, ["model=classical"]).model.items()
             if k not in ("_target_", "name", "batch_size")}
    assert final.points.shape == (final.count, 2)
    assert np.allclose(final.points, detect_ecdna(dapi_channel(rgb), **rules))


def test_ask_point_count_reads_positions(index, settings, cache):
    question = compose_config(settings, ["prompt=point_count"]).prompt.turns[0].format(width=256, height=256)
    reply = "ecDNA at (10, 20), (30.5, 40) and (300, 5).\nCount: 3"
    with FakeOpenAIServer({question: [CannedReply(answer_text=reply)]}) as server:
        final = _ask(index, settings, cache, model_name="openai", prompt_name="point_count",
                     overrides=[f"model.base_url={server.base_url}", "model.max_retries=0"])[-1]
    assert final.done
    assert final.count == 3
    assert final.parse_status == "exact"
    assert final.points.tolist() == [[20.0, 10.0], [40.0, 30.5]]


def test_ask_few_shot_never_shows_the_query(index, settings, cache):
    final = _ask(index, settings, cache, image_id="1790", shots=3)[-1]
    assert final.done
    assert len(final.example_ids) == 3
    assert "1790" not in final.example_ids


def test_ask_invalid_option_is_a_message(index, settings, cache):
    states = _ask(index, settings, cache, model_name="no_such_model")
    assert len(states) == 1
    assert states[0].status.startswith("**Error:**")
    assert "no_such_model" in states[0].error


def test_ask_server_answer_is_parsed(index, settings, cache):
    last_turn = compose_config(settings, ["prompt=multilayer"]).prompt.turns[-1]
    scripts = {last_turn: [CannedReply(answer_text="Count: about 12\nConfidence: 0.7")]}
    with FakeOpenAIServer(scripts) as server:
        final = _ask(index, settings, cache, model_name="openai", prompt_name="multilayer",
                     overrides=[f"model.base_url={server.base_url}", "model.max_retries=0"])[-1]
    assert final.done
    assert final.step_answers[:2] == ("3", "3")
    assert final.count == 12
    assert final.parse_status == "approximate"
    assert final.confidence == pytest.approx(0.7)


def test_ask_server_failure_is_a_message(index, settings, cache):
    question = compose_config(settings, ["prompt=baseline"]).prompt.turns[0]
    scripts = {question: [CannedReply(status=400, body='{"error": {"message": "image too large"}}')]}
    with FakeOpenAIServer(scripts) as server:
        final = _ask(index, settings, cache, model_name="openai",
                     overrides=[f"model.base_url={server.base_url}", "model.max_retries=0"])[-1]
    assert not final.done
    assert final.status.startswith("**Error:** model openai failed")
    assert "400" in final.error


def test_sort_by_error_puts_unparsed_last():
    predictions = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "count_true": [3, 10, 4, 0],
                                "count_pred": [4.0, np.nan, 0.0, 0.0],
                                "parse_status": ["exact", "none", "exact", "exact"]})
    ordered = sort_by_error(predictions)
    assert list(ordered["image_id"]) == ["c", "a", "d", "b"]
    assert list(ordered.columns[:4]) == ["image_id", "count_true", "count_pred", "abs_error"]


def test_missing_store_is_a_message(tmp_path):
    with pytest.raises(RunReadError, match="no MLflow store"):
        RunStore(tmp_path / "absent").experiments()


def test_synthetic_run_image_is_drawn_again():
    view = RunView("run", "synthetic run", pd.DataFrame(), source="synthetic://seed=0&size=64",
                   config={"dataset": {"size": 64}})
    expected, _ = generate_patch(3, 64, SyntheticStyle())
    assert np.array_equal(load_run_image(view, "synthetic-00003", None), expected)


def test_missing_run_image_is_a_message(settings):
    predictions = sort_by_error(pd.DataFrame({"image_id": ["999"], "count_true": [2], "count_pred": [5.0],
                                              "parse_status": ["exact"], "answer_text": ["5"]}))
    view = RunView("run", "old run", pd.DataFrame(), predictions=predictions,
                   image_paths={"999": "/gone/999.tif"})
    rgb, text = select_prediction(view, "999", settings)
    assert rgb is None
    assert "true count 2, predicted 5, |error| 3" in text
    assert "not found" in text


@pytest.mark.slow
def test_run_view_sorts_worst_first(baseline_sweep, settings, sample_dir):
    store = RunStore(baseline_sweep)
    (_, experiment_id), = store.experiments()
    runs = dict(store.runs(experiment_id))
    assert len(runs) == 3
    classical_id = next(run_id for label, run_id in runs.items() if "model=classical" in label)
    view = store.load_run(classical_id)
    errors = (view.predictions["count_pred"] - view.predictions["count_true"]).abs()
    assert len(view.predictions) == 12
    assert list(view.predictions["abs_error"]) == sorted(errors, reverse=True)
    metrics = dict(zip(view.metrics["metric"], view.metrics["value"], strict=True))
    assert metrics["mae"] == pytest.approx(errors.mean(), rel=1e-3)
    assert view.scatter.ndim == 3

    worst = view.predictions.iloc[0]
    rgb, text = select_prediction(view, worst["image_id"], settings)
    assert np.array_equal(rgb, load_image(sample_dir / "images" / f"{worst['image_id']}.tif"))
    assert f"**Image {worst['image_id']}**" in text

    parent_id = next(run_id for label, run_id in runs.items() if "sweep parent" in label)
    parent = store.load_run(parent_id)
    assert parent.predictions is None
    assert "sweep parent" in parent.notes[0]


def test_cli_defaults_serve_loopback():
    arguments = parse_args([])
    assert arguments.host == "127.0.0.1"
    assert arguments.port == 7860
    assert arguments.tracking_dir == Path("mlruns")


@pytest.mark.browser
@pytest.mark.slow
@needs_chromium
def test_browser_upload_and_ask_classical(sample_dir, tmp_path):
    image_path = sample_dir / "images" / "1026.tif"
    settings = AppSettings(dataset_root=sample_dir, tracking_dir=tmp_path / "mlruns")
    with running_app(settings) as url, chromium_page() as page:
        shown = upload_and_ask(page, url, image_path)
        counts_text = page.locator("#inspect-counts").inner_text()
    assert float(shown) == classical_count(image_path)
    assert "ground truth\t2\t9\t0" in counts_text


@pytest.mark.browser
@pytest.mark.slow
@needs_chromium
def test_browser_run_shows_worst_image(baseline_sweep, sample_dir, tmp_path):
    store = RunStore(baseline_sweep)
    (_, experiment_id), = store.experiments()
    label, run_id = next((label, run_id) for label, run_id in store.runs(experiment_id)
                         if "model=classical" in label)
    predictions = pd.read_csv(store.client.download_artifacts(run_id, "predictions.csv", str(tmp_path)),
                              dtype={"image_id": str})
    errors = (predictions["count_pred"] - predictions["count_true"]).abs()
    assert (errors == errors.max()).sum() == 1, "the worst image must be unique for this test"
    worst_id = predictions.loc[errors.idxmax(), "image_id"]

    settings = AppSettings(dataset_root=sample_dir, tracking_dir=baseline_sweep)
    with running_app(settings) as url, chromium_page() as page:
        selection = open_worst_prediction(page, url, label)
        image_shown = page.locator("#run-image img").count()
    assert selection.startswith(f"Image {worst_id}:")
    assert image_shown == 1
