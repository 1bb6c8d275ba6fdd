"""Epoch time of training a setup head with online encoding vs cached frozen features.

    python -m benchmarks.feature_cache [--model RN-tiny] [--image-size 128] [--setup baseline]

Online: every step loads the images, augments them (the train transform) and runs the frozen image
encoder before the head. Cached: every step reads an augmented view's dense features from the
memory-mapped fp16 cache. Both then run the same head forward, ASL loss, backward and SGD step.
The one-time cost of filling the cache is printed separately. Not a test.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import trainables.data as data
from trainables.backbone import load_clip
from trainables.config import DatasetConfig
from trainables.features.cache import FeatureCache
from trainables.mlr import setups
from trainables.mlr.losses import AsymmetricLoss


def train_epoch(setup: torch.nn.Module, targets: torch.Tensor, batches: list[np.ndarray], features_of: Callable) -> float:
    """Seconds for one epoch of head updates, where features_of(indices) -> dense features [B, L, d]."""
    optimizer = torch.optim.SGD([p for p in setup.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    loss_fn = AsymmetricLoss()
    started = time.perf_counter()
    for indices in batches:
        loss = loss_fn(setup(features_of(indices)), targets[indices])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="RN-tiny")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--setup", default="baseline", choices=setups.names())
    parser.add_argument("--num-train", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--work-dir", type=Path, default=None, help="data and cache folder (default: a temporary one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as temporary:
        work = args.work_dir or Path(temporary)
        cfg = DatasetConfig(name="shapes", kind="synthetic", synthetic_num_train=args.num_train)
        dataset = data.build_dataset(cfg, "train", work / "data")
        clip = load_clip(args.model, None, image_size=args.image_size)
        targets = torch.from_numpy(data.dataset_partial_labels(dataset, 0.5, seed=0))
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).numpy()
        batches = [np.sort(order[i : i + args.batch_size]) for i in range(0, len(order), args.batch_size)]

        torch.manual_seed(0)
        setup = setups.build(args.setup, dataset.classnames, clip)
        transform = data.train_transform(args.image_size)

        def encode_online(indices: np.ndarray) -> torch.Tensor:
            images = torch.stack([transform(dataset.load_image(int(i))) for i in indices])
            with torch.no_grad():
                return clip.encode_dense(images)

        online = train_epoch(setup, targets, batches, encode_online)

        cache = FeatureCache(work / "cache")
        started = time.perf_counter()
        stored = cache.dense_features(clip, dataset, ("train", 0), batch_size=args.batch_size)
        fill = time.perf_counter() - started
        cached = train_epoch(setup, targets, batches, lambda indices: torch.from_numpy(np.asarray(stored.features[indices], dtype=np.float32)))

    print(f"{args.setup} on {args.model}@{args.image_size}, {len(dataset)} images, batch {args.batch_size}, {torch.get_num_threads()} threads")
    print(f"online encoding epoch: {online:8.3f} s")
    print(f"cached features epoch: {cached:8.3f} s")
    print(f"ratio online / cached: {online / cached:8.1f} x")
    print(f"one-time cache fill:   {fill:8.3f} s (one augmented view)")


if __name__ == "__main__":
    main()
