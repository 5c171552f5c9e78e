"""The Ask section: one model, one prompt and one image, answered turn by turn."""

from __future__ import annotations

import logging
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import gradio as gr
import numpy as np
from hydra.errors import HydraException

from ecdna_exp.app.drawing import draw_detections
from ecdna_exp.app.inspect_view import ImageChoice
from ecdna_exp.app.settings import AppSettings, DatasetIndex, ModelCache, compose_config, config_names
from ecdna_exp.config import ConfigError, validate_config
from ecdna_exp.data import Sample
from ecdna_exp.experiment import trial_seed
from ecdna_exp.imaging import ImageLoadError, dapi_view, load_image
from ecdna_exp.models.base import GenerationSettings, ModelConfigError, Request
from ecdna_exp.parsing import parse_confidence, parse_count
from ecdna_exp.points import parse_points, strip_points
from ecdna_exp.prompts import PromptSpec, build_opening, continue_conversation, select_examples
from ecdna_exp.tools import ToolOutput

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AskState:
    """What the Ask section shows at one moment of a request.

    ``step_answers`` contains the answer text of each finished turn. ``count``
    and ``parse_status`` come from :func:`ecdna_exp.parsing.parse_count` on
    the last answer once ``done`` is True. ``count`` is None when the answer
    has no count. ``points`` are the ``(N, 2)`` (row, column) positions in
    pixels that the model gave, from a localising model or read from a
    point-then-count answer, or None. ``error`` is set when the request failed.
    """

    status: str
    turns: tuple[str, ...] = ()
    step_answers: tuple[str, ...] = ()
    points: np.ndarray | None = None
    count: float | None = None
    parse_status: str | None = None
    confidence: float | None = None
    done: bool = False
    error: str | None = None
    example_ids: list[str] = field(default_factory=list)


def _examples(index: DatasetIndex, query_id: str, shots: int, strategy: str, seed: int, view: str):
    if shots == 0:
        return [], []
    # NOTE: examples are drawn from the whole dataset folder except the query, not from a run's
    # seeded few-shot pool, so they can differ from the examples of a run with the same seed.
    pool: list[Sample] = [s for image_id, s in index.samples.items() if image_id != query_id]
    if not pool:
        raise ConfigError("few-shot examples need a dataset folder; start the app with --dataset-root")
    chosen = [pool[i] for i in select_examples([s.count_true for s in pool], shots, strategy, seed)]
    return [s.image_id for s in chosen], [(s.load_rgb(view), s.count_true) for s in chosen]


def ask_model(
    choice: ImageChoice,
    *,
    model_name: str,
    prompt_name: str,
    shots: int,
    temperature: float,
    view: str,
    settings: AppSettings,
    index: DatasetIndex,
    cache: ModelCache,
    overrides: Sequence[str] = (),
) -> Iterator[AskState]:
    """Ask a model about one image and yield the state after each stage.

    The model and prompt are composed from ``conf/`` with the same overrides
    as ``python -m ecdna_exp model=... prompt=... shots=... temperature=...``,
    followed by ``overrides`` such as ``model.base_url=http://127.0.0.1:9000/v1``.
    The request uses the sampling seed of trial 0 of a run with the config's
    ``seed``. The last state yielded has ``done`` or ``error`` set: invalid
    options, unreadable images and failed model requests come back as a
    state with ``error``, not as exceptions.
    """
    choices = [f"model={model_name}", f"prompt={prompt_name}", f"shots={int(shots)}",
               f"temperature={float(temperature)}", f"dataset.view={view}"]
    try:
        cfg = compose_config(settings, [*choices, *overrides])
        validate_config(cfg)
        spec = PromptSpec.from_config(cfg.prompt)
        state = AskState(f"Loading model {model_name} ...", turns=spec.turns)
        yield state
        model = cache.get(cfg.model)
        limit = model.max_images_per_request
        if limit is not None and shots + 1 > limit:
            raise ConfigError(f"model {model_name} accepts at most {limit} images per request; lower shots")
        example_ids, examples = _examples(index, choice.image_id, int(shots), cfg.shot_strategy,
                                          int(cfg.seed), view)
        rgb = load_image(choice.path)
        query = rgb if view == "rgb" else dapi_view(rgb)
        tool_output = cache.tool(spec.tool)(query) if spec.tool else ToolOutput()
        fill = {"height": query.shape[0], "width": query.shape[1], **tool_output.fill}
        messages = build_opening(spec, query, examples, fill, tool_output.images)
    except (ConfigError, HydraException, ModelConfigError, ImageLoadError, ValueError, KeyError, OSError,
            RuntimeError) as error:
        log.warning("cannot ask %s about %s: %s", model_name, choice.image_id, error)
        yield AskState(f"**Error:** {error}", error=str(error))
        return

    generation = GenerationSettings(temperature=float(cfg.temperature), top_p=float(cfg.generation.top_p),
                                    top_k=int(cfg.generation.top_k),
                                    max_new_tokens=int(cfg.generation.max_new_tokens),
                                    seed=trial_seed(int(cfg.seed), 0))
    state = replace(state, example_ids=example_ids)
    answers: list[str] = []
    for step, turn in enumerate(spec.turns):
        if step > 0:
            messages = continue_conversation(messages, answers[-1], turn)
        yield replace(state, status=f"Turn {step + 1} of {len(spec.turns)}: waiting for {model_name} ...",
                      step_answers=tuple(answers))
        try:
            response = model.generate([Request(choice.image_id, messages, generation)])[0]
        except Exception as error:  # A crashing backend is reported on the page like a failed request.
            log.exception("model %s raised on image %s", model_name, choice.image_id)
            response_error = f"{type(error).__name__}: {error}"
        else:
            response_error = response.error
        if response_error is not None:
            log.error("model %s failed on image %s: %s", model_name, choice.image_id, response_error)
            yield replace(state, status=f"**Error:** model {model_name} failed: {response_error}",
                          step_answers=tuple(answers), error=response_error)
            return
        answers.append(response.answer_text)

    # As in a run: positions in a point-then-count answer are removed before the count is read.
    parsed = parse_count(strip_points(answers[-1]) if spec.points else answers[-1])
    points = response.points
    if points is None and spec.points:
        points = parse_points(answers[-1], query.shape[:2], spec.points)
    yield replace(state, status=f"Done: {model_name} answered {len(answers)} turn(s).",
                  step_answers=tuple(answers), points=points, count=parsed.value,
                  parse_status=str(parsed.status), confidence=parse_confidence(answers[-1]), done=True)


def steps_markdown(state: AskState) -> str:
    """Format each turn of a multi-turn prompt with the answer it got so far."""
    if len(state.turns) < 2:
        return ""
    parts = []
    for step, turn in enumerate(state.turns):
        answer = state.step_answers[step] if step < len(state.step_answers) else "..."
        quoted = "\n".join(f"> {line}" for line in (answer or "").splitlines() or [""])
        parts.append(f"**Turn {step + 1}:** {turn}\n\n{quoted}")
    return "\n\n".join(parts)


def _outputs(state: AskState, choice: ImageChoice | None = None) -> tuple:
    status = state.status
    if state.example_ids:
        status += f" Few-shot examples: {', '.join(state.example_ids)}."
    answer = state.step_answers[-1] if state.step_answers else ""
    positions = None
    if state.points is not None and choice is not None:
        positions = draw_detections(load_image(choice.path), state.points)
        status += f" The model gave {len(state.points)} position(s), circled in the picture."
    return (status, state.count, state.parse_status or "", state.confidence, answer, positions,
            steps_markdown(state))


def build_ask_section(
    settings: AppSettings, index: DatasetIndex, cache: ModelCache, choice_state: gr.State
) -> None:
    """Lay out the model and prompt choice, the Ask button and the answer fields."""
    gr.Markdown("### Ask a model about this image")
    models, prompts = config_names("model"), config_names("prompt")
    with gr.Row():
        model_name = gr.Dropdown(models, value="classical" if "classical" in models else models[0],
                                 label="model (conf/model)", elem_id="ask-model")
        prompt_name = gr.Dropdown(prompts, value="baseline" if "baseline" in prompts else prompts[0],
                                  label="prompt (conf/prompt)", elem_id="ask-prompt")
        shots = gr.Slider(0, 5, value=0, step=1, label="shots (few-shot examples)")
        temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.1, label="temperature (0 is greedy)")
        view = gr.Radio(["rgb", "dapi"], value="rgb", label="image sent")
    extra = gr.Textbox(label="more Hydra overrides (space-separated)", elem_id="ask-overrides",
                       placeholder="model.base_url=http://127.0.0.1:8000/v1 generation.max_new_tokens=256")
    ask = gr.Button("Ask", variant="primary", elem_id="ask-button")
    status = gr.Markdown("", elem_id="ask-status")
    with gr.Row():
        count = gr.Number(label="parsed count", interactive=False, elem_id="ask-count")
        parse_status = gr.Textbox(label="parse status", interactive=False, elem_id="ask-parse-status")
        confidence = gr.Number(label="stated confidence", interactive=False)
    with gr.Row():
        answer = gr.Textbox(label="raw answer (last turn)", lines=6, interactive=False, elem_id="ask-answer",
                            scale=3)
        positions = gr.Image(label="positions given by the model", type="numpy", format="png",
                             interactive=False, height=240, scale=1)
    steps = gr.Markdown("", elem_id="ask-steps")

    def on_ask(choice, model_value, prompt_value, shots_value, temperature_value, view_value, extra_value,
               progress=gr.Progress()):  # noqa: B008 - Gradio finds the progress tracker by this default.
        if choice is None:
            gr.Warning("Pick or upload an image first.")
            yield _outputs(AskState("**Error:** pick or upload an image first.", error="no image"))
            return
        try:
            overrides = shlex.split(extra_value or "")
        except ValueError as error:
            yield _outputs(AskState(f"**Error:** invalid overrides: {error}", error=str(error)))
            return
        for state in ask_model(choice, model_name=model_value, prompt_name=prompt_value,
                               shots=int(shots_value), temperature=float(temperature_value), view=view_value,
                               settings=settings, index=index, cache=cache, overrides=overrides):
            if state.error:
                gr.Warning(state.error)
            elif not state.done:
                progress((len(state.step_answers), len(state.turns)), desc=state.status, unit="turns")
            yield _outputs(state, choice)

    ask.click(on_ask, [choice_state, model_name, prompt_name, shots, temperature, view, extra],
              [status, count, parse_status, confidence, answer, positions, steps])
