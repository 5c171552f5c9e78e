"""Measure images per second and peak memory of the transformers backend at several batch sizes.

On the CPU it runs the tiny random checkpoints of every family. With CUDA it
also runs Qwen2-VL 2B and 7B built from their published architecture with
random bfloat16 weights, which measures speed and memory without downloading
weights. Every request is one zero-shot conversation about a 256 x 256 patch,
decoded greedily for a fixed number of new tokens. Run it from the repository
root::

    python benchmarks/bench_models.py
    python benchmarks/bench_models.py --families pixtral --batch-sizes 1 8 --threads 2
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import psutil
import torch

from ecdna_exp.imaging import load_image
from ecdna_exp.models.base import GenerationSettings, Request
from ecdna_exp.models.hf import TransformersVLM
from ecdna_exp.models.tiny import FAMILIES, build_tiny_models

log = logging.getLogger("bench_models")

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGE_DIR = REPO_ROOT / ".." / "shared" / "data" / "ecseg_sample" / "images"
QUESTION = "How many ecDNA are in this image? Answer with a single number."

# Architecture of Qwen/Qwen2-VL-2B-Instruct and Qwen/Qwen2-VL-7B-Instruct, from their config.json.
# NOTE: typed in from the published configs, not read from a download, so check them against the hub
# before quoting GPU figures as those of the released models.
QWEN2_VL_SIZES = {
    "qwen2-vl-2b": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                    "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
                    "tie_word_embeddings": True},
    "qwen2-vl-7b": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                    "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                    "tie_word_embeddings": False},
}  # fmt: skip


class PeakMemory:
    """Sample this process's resident set size (RSS) every few milliseconds and keep the maximum, in bytes."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.peak_rss = 0
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self._process.memory_info().rss)
            time.sleep(self.interval_s)

    def __enter__(self):
        self.peak_rss = self._process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self._process.memory_info().rss)


def force_full_length(vlm: TransformersVLM) -> None:
    """Make the model ignore its end-of-sequence token, so random weights cannot stop some answers early."""
    vlm.model.generation_config.eos_token_id = None
    vlm.model.generation_config.stop_strings = None


def make_requests(count: int, max_new_tokens: int) -> list[Request]:
    """Build ``count`` zero-shot requests about the first 256 x 256 sample patches, cycling if needed."""
    paths = sorted(IMAGE_DIR.glob("*.tif"))
    if not paths:
        sys.exit(f"no .tif patches found in {IMAGE_DIR.resolve()}; the benchmark needs ../shared/data")
    settings = GenerationSettings(temperature=0.0, max_new_tokens=max_new_tokens)
    requests = []
    for index in range(count):
        image = load_image(paths[index % len(paths)])
        content = [{"type": "image", "image": image}, {"type": "text", "text": QUESTION}]
        requests.append(Request(f"bench-{index}", [{"role": "user", "content": content}], settings))
    return requests


def measure(
    vlm: TransformersVLM, requests: list[Request], batch_size: int, repeats: int, on_gpu: bool
) -> dict:
    """Time ``vlm.generate`` over ``requests`` at ``batch_size``, after one warm-up batch.

    Of ``repeats`` runs the fastest is kept, because on a shared machine the
    slower runs measure other processes as well. CPU seconds per image measure
    the process's own CPU time, which contention changes less than wall time.
    """
    vlm.batch_size = batch_size
    vlm.generate(requests[:batch_size])
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    best_s = float("inf")
    cpu_s = float("inf")
    failed = 0
    with PeakMemory() as memory:
        for _ in range(repeats):
            started = time.perf_counter()
            cpu_started = time.process_time()
            responses = vlm.generate(requests)
            if on_gpu:
                torch.cuda.synchronize()
            best_s = min(best_s, time.perf_counter() - started)
            cpu_s = min(cpu_s, time.process_time() - cpu_started)
            failed = max(failed, sum(not response.ok for response in responses))
    peak_bytes = torch.cuda.max_memory_allocated() if on_gpu else memory.peak_rss
    return {
        "images_per_s": len(requests) / best_s,
        "cpu_s_per_image": cpu_s / len(requests),
        "peak_mib": peak_bytes / 2**20,
        "failed": failed,
    }


def real_size_qwen(size: str, tiny_folder: Path) -> TransformersVLM:
    """Build a random bfloat16 Qwen2-VL of the published ``size`` on the GPU, with the tiny tokenizer.

    The image processor keeps Qwen2-VL's default pixel budget, so a 256 x 256
    patch becomes 81 image tokens as with the released checkpoint.
    """
    from transformers import (
        AutoProcessor,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
    )

    processor = AutoProcessor.from_pretrained(tiny_folder)
    processor.image_processor = Qwen2VLImageProcessor()
    tokenizer = processor.tokenizer
    text = QWEN2_VL_SIZES[size]
    config = Qwen2VLConfig(
        text_config={
            **{key: value for key, value in text.items() if key != "tie_word_embeddings"},
            "max_position_embeddings": 32768,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={"depth": 32, "embed_dim": 1280, "hidden_size": text["hidden_size"], "num_heads": 16},
        tie_word_embeddings=text["tie_word_embeddings"],
        image_token_id=processor.image_token_id,
        video_token_id=processor.video_token_id,
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    )
    with torch.device("cuda"):
        model = Qwen2VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    return TransformersVLM.from_loaded(model, processor, name=size, checkpoint=f"random {size}")


def print_table(rows: list[dict], header_note: str) -> None:
    print(f"\n{header_note}\n")
    print("| model | batch | images/s | speedup vs batch 1 | CPU s/image | peak memory (MiB) | failed |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['model']} | {row['batch']} | {row['images_per_s']:.2f} | {row['speedup']:.2f}x "
            f"| {row['cpu_s_per_image']:.3f} | {row['peak_mib']:.0f} | {row['failed']} |"
        )


def run_model(vlm: TransformersVLM, label: str, args, on_gpu: bool, rows: list[dict]) -> None:
    force_full_length(vlm)
    requests = make_requests(args.images, args.max_new_tokens)
    baseline = None
    for batch_size in args.batch_sizes:
        result = measure(vlm, requests, batch_size, args.repeats, on_gpu)
        baseline = baseline or result["images_per_s"]
        rows.append(
            {"model": label, "batch": batch_size, "speedup": result["images_per_s"] / baseline, **result}
        )
        log.info("%s batch %d: %.2f images/s", label, batch_size, result["images_per_s"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 8, 16])
    parser.add_argument("--images", type=int, default=32, help="requests per measurement (default 32)")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="tokens decoded per answer (default 8)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per batch size, fastest kept (default 3)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1, faster for the tiny models)"
    )
    parser.add_argument(
        "--no-gpu-models", action="store_true", help="skip the real-size Qwen2-VL runs on CUDA"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    on_gpu = torch.cuda.is_available()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tiny_root:
        folders = build_tiny_models(tiny_root, FAMILIES if on_gpu else args.families)
        for family in args.families:
            vlm = TransformersVLM(
                name=family, checkpoint=f"tiny/{family}", checkpoint_dir=tiny_root, dtype="float32"
            )
            run_model(vlm, f"tiny {family}", args, on_gpu, rows)
            vlm.close()
        if on_gpu and not args.no_gpu_models:
            for size in QWEN2_VL_SIZES:
                vlm = real_size_qwen(size, folders["qwen"])
                run_model(vlm, f"{size} (random bf16)", args, on_gpu, rows)
                vlm.close()

    device = torch.cuda.get_device_name() if on_gpu else f"CPU, {os.cpu_count()} cores"
    note = (
        f"{device}; torch {torch.__version__}, {torch.get_num_threads()} threads; {platform.python_version()}; "
        f"{args.images} requests of one 256 x 256 patch, {args.max_new_tokens} new tokens each, greedy, "
        f"fastest of {args.repeats} runs. "
        f"Peak memory: {'torch.cuda.max_memory_allocated' if on_gpu else 'process RSS'}."
    )
    print_table(rows, note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
