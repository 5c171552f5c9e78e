"""The Browse tab: pick an MLflow run, see its metrics and scatter plot, and look at its worst images."""

from __future__ import annotations

import logging
import math

import gradio as gr
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from ecdna_exp.app.run_store import PREDICTION_COLUMNS, RunReadError, RunStore, RunView, load_run_image
from ecdna_exp.app.settings import AppSettings
from ecdna_exp.imaging import ImageLoadError

log = logging.getLogger(__name__)

#: Errors of reading a store, run or image that the page reports as messages.
READ_ERRORS = (RunReadError, MlflowException, ImageLoadError, OSError, ValueError)


def _number(value) -> str:
    return "none" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:g}"


def selection_markdown(row: pd.Series) -> str:
    """Describe one prediction row: its counts, parse status, answer and any per-turn answers."""
    summary = (f"**Image {row['image_id']}**: true count {_number(row['count_true'])}, "
               f"predicted {_number(row['count_pred'])}, |error| {_number(row['abs_error'])}, "
               f"parse status `{row.get('parse_status')}`.")
    lines = [summary]
    steps = sorted((c for c in row.index if c.startswith("step") and c.endswith("_answer")),
                   key=lambda c: int(c[4:-7]) if c[4:-7].isdigit() else 0)
    for column in [*steps, "answer_text"]:
        text = row.get(column)
        if isinstance(text, str):
            title = "Answer" if column == "answer_text" else f"Turn {column[4:-7]}"
            lines.append(f"**{title}:**\n\n" + "\n".join(f"> {line}" for line in text.splitlines() or [""]))
    if isinstance(row.get("error"), str):
        lines.append(f"**Error:** {row['error']}")
    return "\n\n".join(lines)


def select_prediction(
    view: RunView | None, image_id: str, settings: AppSettings
) -> tuple[np.ndarray | None, str]:
    """Return the image and the description of the prediction for ``image_id`` in a loaded run."""
    if view is None or view.predictions is None:
        return None, "Pick a run with predictions first."
    rows = view.predictions[view.predictions["image_id"] == str(image_id)]
    if rows.empty:
        return None, f"**Error:** image {image_id} is not in the predictions of run {view.run_name}."
    text = selection_markdown(rows.iloc[0])
    try:
        rgb = load_run_image(view, str(image_id), settings.dataset_root)
    except ImageLoadError as error:
        log.warning("cannot show image %s of run %s: %s", image_id, view.run_id, error)
        return None, f"{text}\n\n**Error:** {error}"
    return rgb, text


def _run_choices(store: RunStore) -> tuple[list, str | None, list, str]:
    """Return experiment choices, the chosen experiment, its run choices and a status message."""
    try:
        experiments = store.experiments()
        if not experiments:
            return [], None, [], f"The MLflow store at {store.directory} has no runs yet."
        experiment_id = experiments[0][1]
        runs = store.runs(experiment_id)
    except READ_ERRORS as error:
        log.warning("cannot list the runs in %s: %s", store.directory, error)
        return [], None, [], f"**Error:** {error}"
    return experiments, experiment_id, runs, f"MLflow store: {store.directory}"


def build_runs_tab(settings: AppSettings, store: RunStore) -> None:
    """Lay out the run choice, the metrics, the scatter plot, the predictions table and the selected image."""
    experiments, experiment_id, runs, message = _run_choices(store)
    run_state = gr.State(None)
    with gr.Row():
        experiment = gr.Dropdown(experiments, value=experiment_id, label="MLflow experiment",
                                 elem_id="run-experiment", scale=1)
        run = gr.Dropdown(runs, value=None, label="run", elem_id="run-run", scale=3)
        refresh = gr.Button("Refresh", scale=0)
    status = gr.Markdown(message, elem_id="run-status")
    with gr.Row():
        metrics = gr.Dataframe(label="metrics", interactive=False, max_height=360)
        scatter = gr.Image(label="predicted against true counts", show_label=False, type="numpy",
                           interactive=False, height=360)
    predictions = gr.Dataframe(label="predictions, largest |error| first (select a row to see its image)",
                               interactive=False, max_height=400, max_chars=80, elem_id="run-predictions")
    with gr.Row():
        selected_image = gr.Image(label="selected image", type="numpy", format="png", interactive=False,
                                  height=360, elem_id="run-image")
        selected_text = gr.Markdown("", elem_id="run-selection")
    run_outputs = [run_state, status, metrics, scatter, predictions, selected_image, selected_text]

    def on_refresh():
        choices, chosen, run_choices, text = _run_choices(store)
        return gr.update(choices=choices, value=chosen), gr.update(choices=run_choices, value=None), text

    def on_experiment(chosen: str | None):
        try:
            return gr.update(choices=store.runs(chosen) if chosen else [], value=None), ""
        except READ_ERRORS as error:
            log.warning("cannot list runs of experiment %s: %s", chosen, error)
            return gr.update(choices=[], value=None), f"**Error:** {error}"

    def on_run(run_id: str | None):
        empty = (None, "", None, None, None, None, "")
        if not run_id:
            return empty
        try:
            view = store.load_run(run_id)
        except READ_ERRORS as error:
            log.warning("cannot load run %s: %s", run_id, error)
            gr.Warning(str(error))
            return (None, f"**Error:** {error}", *empty[2:])
        table = view.predictions[PREDICTION_COLUMNS] if view.predictions is not None else None
        text = " ".join([f"Run **{view.run_name}** ({view.run_id}).", *view.notes])
        return view, text, view.metrics, view.scatter, table, None, ""

    def on_select(view: RunView | None, event: gr.SelectData):
        image_id = event.row_value[0] if event.row_value else None
        if image_id is None and view is not None and view.predictions is not None:
            image_id = view.predictions.iloc[event.index[0]]["image_id"]
        return select_prediction(view, image_id, settings)

    refresh.click(on_refresh, None, [experiment, run, status])
    experiment.input(on_experiment, [experiment], [run, status])
    run.input(on_run, [run], run_outputs)
    predictions.select(on_select, [run_state], [selected_image, selected_text])
