"""Train the ecDNA segmenter on labelled ecSeg patches plus synthetic patches.

Run ``python -m ecdna_exp.segmenter.train --help`` for the options. The
weights and a JSON record of the run (command, seed, split, time, machine,
validation scores) are written to ``--out`` and the ``.json`` beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ecdna_exp.ground_truth import ECDNA
from ecdna_exp.segmenter.dataset import (
    DEFAULT_DATA,
    Patch,
    augment,
    list_patch_ids,
    load_patches,
    separation_mask,
    split_ids,
)
from ecdna_exp.segmenter.evaluate import calibrate_and_score
from ecdna_exp.segmenter.net import NetConfig, UNet, count_parameters
from ecdna_exp.segmenter.predict import DEFAULT_WEIGHTS, Segmenter
from ecdna_exp.synthetic import SyntheticStyle, generate_patch

log = logging.getLogger(__name__)

#: Cross-entropy weights of background, nucleus, chromosome and ecDNA. ecDNA covers about 1% of pixels.
CLASS_WEIGHTS = (1.0, 1.0, 1.0, 8.0)
#: Weight of the ecDNA soft Dice loss added to the cross-entropy.
DICE_WEIGHT = 0.5
#: Chessboard distance in pixels within which a pixel near two different ecDNA is a separation pixel.
SEPARATION_RADIUS = 2

#: Synthetic objects about 2x larger than the generator's defaults. The ecSeg sample's median ecDNA label is 40 px.
ENLARGED_STYLE = SyntheticStyle(
    ecdna_radius=(2.5, 4.5),
    chromosome_length=(24, 50),
    chromosome_width=(8, 14),
    nucleus_radius=(45, 90),
    blur_sigma=1.2,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ecdna_exp.segmenter.train", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="ecSeg sample folder with images/ and labels/"
    )
    parser.add_argument(
        "--epochs", type=int, default=24, help="passes over the training patches when --minutes is 0"
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=18.0,
        help="training time budget in minutes; the learning-rate schedule follows the elapsed time "
        "and training stops when the budget is spent (0: run --epochs epochs instead)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS, help="weights file to write (.pt)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the split, initial weights and augmentation"
    )
    # NOTE: training on CUDA has not been run; only the CPU training time is measured.
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    parser.add_argument(
        "--val-fraction", type=float, default=0.2, help="share of patches held out for validation"
    )
    parser.add_argument("--crop", type=int, default=256, help="side in pixels of the random training crops")
    parser.add_argument("--batch-size", type=int, default=8, help="crops per optimisation step")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate")
    parser.add_argument(
        "--synthetic",
        type=int,
        default=16,
        help="synthetic patches mixed into each epoch (0 for real data only)",
    )
    parser.add_argument(
        "--separation-weight",
        type=float,
        default=10.0,
        help="cross-entropy weight of non-ecDNA pixels between two nearby ecDNA, in place of 1 "
        "(1 turns it off); it teaches the network to keep neighbouring ecDNA apart",
    )
    parser.add_argument("--base-channels", type=int, default=16, help="U-Net feature maps at the first level")
    parser.add_argument("--depth", type=int, default=5, help="U-Net levels (depth - 1 downsamplings)")
    parser.add_argument(
        "--test-time-views",
        type=int,
        choices=(1, 8),
        default=8,
        help="flipped and rotated views averaged at prediction time, stored in the JSON record",
    )
    parser.add_argument(
        "--limit", type=int, default=0, help="use only the first N patches (smoke runs); 0 for all"
    )
    args = parser.parse_args(argv)
    if args.separation_weight <= 0:
        parser.error(f"--separation-weight must be positive, got {args.separation_weight}")
    return args


def loss_function(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_weights: torch.Tensor,
    pixel_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return weighted cross-entropy plus :data:`DICE_WEIGHT` times the soft Dice loss of the ecDNA class.

    ``logits`` is ``(B, 4, H, W)`` and ``target`` ``(B, H, W)`` int64. Each
    pixel's cross-entropy is weighted by its class weight, times its entry
    of the ``(B, H, W)`` ``pixel_weights`` when given.
    """
    if pixel_weights is None:
        cross_entropy = F.cross_entropy(logits, target, weight=class_weights)
    else:
        weights = class_weights[target] * pixel_weights
        cross_entropy = (F.cross_entropy(logits, target, reduction="none") * weights).sum() / weights.sum()
    ecdna_prob = torch.softmax(logits, dim=1)[:, ECDNA]
    ecdna_true = (target == ECDNA).float()
    intersection = (ecdna_prob * ecdna_true).sum()
    dice = (2 * intersection + 1.0) / (ecdna_prob.sum() + ecdna_true.sum() + 1.0)
    return cross_entropy + DICE_WEIGHT * (1.0 - dice)


class TimeBudgetSchedule:
    """One-cycle learning rate driven by the share of a time budget already spent.

    The rate rises on a cosine from ``max_lr / 25`` to ``max_lr`` over the
    first 10% of ``seconds`` and falls on a cosine to ``max_lr / 1e4`` by the
    end, as :class:`torch.optim.lr_scheduler.OneCycleLR` does over steps.
    Call :meth:`step` after each optimiser step and stop training once
    :attr:`done` is true.
    """

    def __init__(self, optimiser: torch.optim.Optimizer, max_lr: float, seconds: float, warmup: float = 0.1):
        self.optimiser = optimiser
        self.max_lr = max_lr
        self.seconds = seconds
        self.warmup = warmup
        self.started = time.perf_counter()
        self._set_lr(0.0)

    @property
    def fraction(self) -> float:
        """Share of the budget spent, from 0 upwards."""
        return (time.perf_counter() - self.started) / self.seconds

    @property
    def done(self) -> bool:
        return self.fraction >= 1.0

    def _set_lr(self, fraction: float) -> None:
        start, final = self.max_lr / 25, self.max_lr / 1e4
        if fraction < self.warmup:
            lr = start + (self.max_lr - start) * (1 - math.cos(math.pi * fraction / self.warmup)) / 2
        else:
            progress = min(1.0, (fraction - self.warmup) / (1 - self.warmup))
            lr = final + (self.max_lr - final) * (1 + math.cos(math.pi * progress)) / 2
        for group in self.optimiser.param_groups:
            group["lr"] = lr

    def step(self) -> None:
        self._set_lr(self.fraction)


def synthetic_pool(count: int, seed: int) -> list[Patch]:
    """Draw ``count`` synthetic patches, half in the generator's default style and half enlarged."""
    pool = []
    for index in range(count):
        style = ENLARGED_STYLE if index % 2 else None
        rgb, label_map = generate_patch(seed * 1_000_003 + index, size=256, style=style)
        pool.append(Patch(f"synthetic-{index}", rgb[..., 2].astype(np.float32) / 255.0, label_map))
    return pool


def set_separation_weights(patches: list[Patch], weight: float) -> None:
    """Give each patch pixel weights of ``weight`` on its separation pixels and 1 elsewhere."""
    for patch in patches:
        patch.pixel_weights = np.where(
            separation_mask(patch.label_map, SEPARATION_RADIUS), weight, 1.0
        ).astype(np.float32)


def train_epoch(net, optimiser, scheduler, samples, rng, args, class_weights, device) -> tuple[float, float]:
    """Run one epoch over ``samples`` in random order.

    Returns the mean loss and the share of ecDNA pixels of the training crops
    that the network labelled ecDNA while training.
    """
    net.train()
    order = rng.permutation(len(samples))
    losses = []
    ecdna_hits = ecdna_total = 0
    for start in range(0, len(order), args.batch_size):
        if getattr(scheduler, "done", False):
            break
        views = [
            augment(
                samples[i].dapi, samples[i].label_map, rng, args.crop, pixel_weights=samples[i].pixel_weights
            )
            for i in order[start : start + args.batch_size]
        ]
        x = torch.from_numpy(np.stack([v[0] for v in views]))[:, None].to(device)
        y = torch.from_numpy(np.stack([v[1] for v in views])).to(device)
        pixel_weights = (
            torch.from_numpy(np.stack([v[2] for v in views])).to(device) if len(views[0]) == 3 else None
        )
        logits = net(x)
        loss = loss_function(logits, y, class_weights, pixel_weights)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        scheduler.step()
        losses.append(loss.item())
        is_ecdna = y == ECDNA
        ecdna_hits += int((logits.argmax(dim=1)[is_ecdna] == ECDNA).sum())
        ecdna_total += int(is_ecdna.sum())
    return float(np.mean(losses)), ecdna_hits / max(ecdna_total, 1)


def machine_description(device: str) -> dict[str, str | int]:
    description: dict[str, str | int] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        description["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return description


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    ids = list_patch_ids(args.data)
    if args.limit:
        ids = ids[: args.limit]
    train_ids, val_ids = split_ids(ids, args.val_fraction, args.seed)
    train_patches = load_patches(args.data, train_ids)
    val_patches = load_patches(args.data, val_ids)
    synthetic = synthetic_pool(4 * args.synthetic, args.seed) if args.synthetic else []
    if args.separation_weight != 1.0:
        set_separation_weights(train_patches + synthetic, args.separation_weight)
    log.info(
        "%d training, %d validation, %d synthetic patches",
        len(train_patches),
        len(val_patches),
        len(synthetic),
    )

    config = NetConfig(base_channels=args.base_channels, depth=args.depth)
    net = UNet(config).to(args.device)
    class_weights = torch.tensor(CLASS_WEIGHTS, device=args.device)
    samples_per_epoch = len(train_patches) + min(args.synthetic, len(synthetic))
    steps_per_epoch = -(-samples_per_epoch // args.batch_size)
    optimiser = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    if args.minutes > 0:
        scheduler = TimeBudgetSchedule(optimiser, args.lr, 60.0 * args.minutes)
        max_epochs = sys.maxsize
    else:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimiser, max_lr=args.lr, total_steps=max(1, args.epochs * steps_per_epoch), pct_start=0.1
        )
        max_epochs = args.epochs

    load_at_start = list(os.getloadavg())
    log.info("load average at start %s", load_at_start)
    started = time.perf_counter()
    epochs_run = 0
    for epoch in range(max_epochs):
        if getattr(scheduler, "done", False):
            break
        picked = (
            rng.choice(len(synthetic), size=min(args.synthetic, len(synthetic)), replace=False)
            if synthetic
            else []
        )
        samples = train_patches + [synthetic[i] for i in picked]
        loss, ecdna_recall = train_epoch(
            net, optimiser, scheduler, samples, rng, args, class_weights, args.device
        )
        epochs_run = epoch + 1
        log.info(
            "epoch %d loss %.4f, ecDNA pixel recall %.3f (%.0f s)",
            epochs_run,
            loss,
            ecdna_recall,
            time.perf_counter() - started,
        )
    train_seconds = time.perf_counter() - started

    segmenter = Segmenter(net, {"test_time_views": args.test_time_views}, device=args.device)
    scores = calibrate_and_score(segmenter, train_patches, val_patches)
    log.info(
        "ecDNA threshold %s, minimum areas %s; validation scores %s",
        scores["ecdna_threshold"],
        scores["min_areas"],
        scores["val_scores"],
    )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    state_dict = {key: value.detach().cpu() for key, value in net.state_dict().items()}
    torch.save({"state_dict": state_dict, "net_config": config.to_dict()}, args.out)
    record = {
        "command": " ".join(
            ["python -m ecdna_exp.segmenter.train", *map(shlex.quote, sys.argv[1:] if argv is None else argv)]
        ),
        "seed": args.seed,
        "epochs": epochs_run,
        "time_budget_minutes": args.minutes,
        "load_average_start_end": [load_at_start, list(os.getloadavg())],
        "crop": args.crop,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "synthetic_per_epoch": args.synthetic,
        "class_weights": list(CLASS_WEIGHTS),
        "dice_weight": DICE_WEIGHT,
        "separation_weight": args.separation_weight,
        "separation_radius_px": SEPARATION_RADIUS,
        "net_config": config.to_dict(),
        "parameters": count_parameters(net),
        "input": "DAPI (blue channel, or grey for grey images) / 255, one channel",
        "tile": 256,
        "test_time_views": args.test_time_views,
        "ecdna_threshold": scores["ecdna_threshold"],
        "min_areas": scores["min_areas"],
        "data": str(args.data),
        "train_ids": train_ids,
        "val_ids": val_ids,
        "training_seconds": round(train_seconds, 1),
        "machine": machine_description(args.device),
        "torch_version": torch.__version__,
        "train_scores": scores["train_scores"],
        "val_scores": scores["val_scores"],
        "weights_bytes": args.out.stat().st_size,
    }
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("wrote %s (%d bytes) after %.0f s of training", args.out, record["weights_bytes"], train_seconds)
    return record


if __name__ == "__main__":
    main()
