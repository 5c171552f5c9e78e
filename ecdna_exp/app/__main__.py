"""``python -m ecdna_exp.app``: serve the app on 127.0.0.1."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ecdna_exp.app.layout import build_app, launch_app
from ecdna_exp.app.settings import DEFAULT_DATASET_ROOT, AppSettings, ModelCache

log = logging.getLogger("ecdna_exp.app")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ecdna_exp.app", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (default 127.0.0.1, reachable from this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="TCP port (default 7860)")
    parser.add_argument("--dataset-root", type=Path, default=None,
                        help=f"ecSeg-style folder of patches to pick from (default {DEFAULT_DATASET_ROOT} "
                             "if it exists)")
    parser.add_argument("--tracking-dir", type=Path, default=Path("mlruns"),
                        help="MLflow store written by python -m ecdna_exp (default mlruns)")
    parser.add_argument("--checkpoint-dir", type=Path, default=None,
                        help="folder of local checkpoints, one subfolder per model, e.g. from "
                             "python -m ecdna_exp.models.tiny --out DIR")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    dataset_root = args.dataset_root
    if dataset_root is None and DEFAULT_DATASET_ROOT.is_dir():
        dataset_root = DEFAULT_DATASET_ROOT
    if dataset_root is not None and not dataset_root.is_dir():
        raise SystemExit(f"dataset folder not found: {dataset_root}; "
                         "pass an existing folder to --dataset-root")
    settings = AppSettings(dataset_root=dataset_root, tracking_dir=args.tracking_dir,
                           checkpoint_dir=args.checkpoint_dir)
    cache = ModelCache()
    demo = build_app(settings, cache=cache)
    log.info("serving on http://%s:%d (dataset %s, MLflow store %s)", args.host, args.port,
             dataset_root, args.tracking_dir)
    try:
        launch_app(demo, host=args.host, port=args.port, block=True)
    finally:
        cache.close()
        log.info("stopped")


if __name__ == "__main__":
    main()
