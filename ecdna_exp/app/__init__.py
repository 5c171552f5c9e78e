"""A Gradio app to inspect patches, ask a model about one, and browse finished MLflow runs.

Start it with ``python -m ecdna_exp.app`` (see ``--help``); it serves on
127.0.0.1 only. :func:`build_app` returns the Blocks without launching, for
tests and embedding.
"""

from __future__ import annotations

import os

# Gradio reads this when it is imported; off, it sends no usage data and checks no version online.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from ecdna_exp.app.layout import build_app
from ecdna_exp.app.settings import AppSettings

__all__ = ["AppSettings", "build_app"]
