"""The page: the Inspect tab with its Ask section, and the Browse tab."""

from __future__ import annotations

import gradio as gr

from ecdna_exp.app.ask_view import build_ask_section
from ecdna_exp.app.inspect_view import build_inspect_section
from ecdna_exp.app.run_store import RunStore
from ecdna_exp.app.runs_view import build_runs_tab
from ecdna_exp.app.settings import AppSettings, DatasetIndex, ModelCache

# System fonts only: Gradio's default theme loads its fonts from Google's servers.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "monospace"])


def build_app(settings: AppSettings, *, cache: ModelCache | None = None) -> gr.Blocks:
    """Build the app's page; the caller launches it (``demo.launch(server_name="127.0.0.1", share=False)``).

    Models built for requests stay in ``cache`` (a new :class:`ModelCache` when None) until it is closed.
    """
    cache = cache or ModelCache()
    index = DatasetIndex(settings.dataset_root)
    store = RunStore(settings.tracking_dir)
    with gr.Blocks(title="ecdna-exp") as demo:
        gr.Markdown("## ecdna-exp: count ecDNA in metaphase patches")
        with gr.Tab("Inspect an image", elem_id="tab-inspect"):
            choice_state = build_inspect_section(settings, index, cache)
            build_ask_section(settings, index, cache, choice_state)
        with gr.Tab("Browse a run", elem_id="tab-runs"):
            build_runs_tab(settings, store)
    return demo


def launch_app(demo: gr.Blocks, *, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> str:
    """Serve the page on ``host:port`` without a public share link and return its local URL.

    With ``block=False`` the server runs in a background thread until ``demo.close()``.
    """
    _, local_url, _ = demo.launch(server_name=host, server_port=port, share=False,
                                  prevent_thread_lock=not block, quiet=True, ssr_mode=False, mcp_server=False,
                                  theme=THEME, footer_links=["api", "settings"])
    return local_url
