"""Filling the feature cache ahead of a run: every entry a trial will read, encoded once in this
process with one progress bar, after saying how long that takes on a CPU (measured on a few batches).

    fill(dataset_config, backbone, features, cache_dir=..., data_dir=...)   # one MLR dataset's entries
    encode_all(clip, jobs, cache)                                            # any list of entries
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from trainables import data
from trainables.backbone.runtime import FrozenCLIP
from trainables.backbone.weights import load_backbone
from trainables.config import BackboneConfig, DatasetConfig, FeatureConfig
from trainables.devices import default_workers, trial_device
from trainables.features.cache import FeatureCache
from trainables.features.encoding import Encoding, View, fill_views, view_transform


def _activation(clip: FrozenCLIP) -> str:
    return f"{'QuickGELU' if clip.quick_gelu else 'GELU'} ({clip.quick_gelu_reason})"


def encoding_rate(
    clip: FrozenCLIP, dataset: data.MultiLabelDataset, view: View, *, encoding: Encoding = "dense",
    batch_size: int, num_workers: int, device: torch.device, batches: int = 3, augmentation: data.Augmentation = "reference",
) -> float:  # fmt: skip
    """Images per second of encoding `dataset` at `view`, measured on a few batches (after a first
    one that warms up the loader and the kernels); nothing is stored."""
    transform, view_index = view_transform(view, clip.image_size, augmentation)
    images = data.ImageTensors(dataset, transform, clip.image_size, view_index)
    batch_size = max(1, min(batch_size, len(dataset) // (batches + 1)))  # a small set still gives a few batches
    subset = torch.utils.data.Subset(images, range(min(len(dataset), (batches + 1) * batch_size)))
    started, encoded = None, 0
    for batch, _, _ in data.batches_of(torch.utils.data.DataLoader(subset, batch_size=batch_size, num_workers=num_workers)):
        with torch.no_grad():
            pixels = batch.to(device)
            clip.encode_dense(pixels) if encoding == "dense" else clip.encode_image(pixels)
        if started is None:
            started = time.perf_counter()
        else:
            encoded += len(batch)
    return encoded / (time.perf_counter() - started) if encoded else math.nan


Job = tuple[data.MultiLabelDataset, View, Encoding]
"""One cache entry to fill: a dataset split, its view, its encoding."""


def encode_all(
    clip: FrozenCLIP, jobs: list[Job], cache: FeatureCache, *, batch_size: int = 100,
    num_workers: int | None = None, progress: bool = True, report: Callable[[str], None] | None = None,
) -> dict:  # fmt: skip
    """Encode every entry of `jobs` the cache lacks, in this process, with `num_workers`
    image-decoding workers (default: every CPU it may use). On a CPU, `report` is first told how
    long that will take, measured on a few batches. Returns counts for a report."""
    workers = default_workers() if num_workers is None else num_workers
    summary = {"encoded": 0, "reused": 0, "skipped_images": 0, "activation": _activation(clip)}
    missing = [
        sum(map(len, cache.missing_shards(cache.key(clip, d, v, e), len(d)).values())) for d, v, e in jobs
    ]
    if report is not None and clip.device.type == "cpu" and sum(missing):
        dataset, view, encoding = next(job for job, count in zip(jobs, missing) if count)
        rate = encoding_rate(
            clip, dataset, view, encoding=encoding, batch_size=batch_size, num_workers=workers, device=clip.device,
            augmentation=cache.augmentation,
        )  # fmt: skip
        report(
            f"Encoding {sum(missing):,} images on this machine's CPU ({workers} loader workers): about "
            f"{format_duration(sum(missing) / rate)} at {rate:.1f} images/s, measured on a few batches"
        )
    for (dataset, view, encoding), count in zip(jobs, missing):
        summary["encoded" if count else "reused"] += 1
        stored = cache.dense_features(
            clip, dataset, view, batch_size=batch_size, num_workers=workers, progress=progress, encoding=encoding
        )
        summary["skipped_images"] += int((~stored.valid).sum())
    return summary


def fill(
    dataset_config: DatasetConfig,
    backbone: BackboneConfig,
    features: FeatureConfig,
    *,
    cache_dir: Path,
    data_dir: Path,
    device: str = "auto",
    batch_size: int = 100,
    num_workers: int | None = None,
    progress: bool = True,
    report: Callable[[str], None] | None = None,
) -> dict:
    """Encode everything an MLR trial on `dataset_config` reads (its train views and the test
    split) ahead of a run, as `encode_all` does.

    The features depend on (dataset, backbone, feature mode) only, so one call covers every setup,
    label ratio, seed and loss setting on that dataset. Returns counts for a report.
    """
    clip = load_backbone(backbone, data_dir, trial_device(device))
    data.check(dataset_config, data_dir)
    jobs = [(data.build_dataset(dataset_config, split, data_dir), view, "dense") for split, view in fill_views(features)]
    return encode_all(
        clip, jobs, FeatureCache(cache_dir, augmentation=features.augmentation), batch_size=batch_size, num_workers=num_workers, progress=progress, report=report
    )


def format_duration(seconds: float) -> str:
    """`3 h 12 min`, `4 min 10 s`, `12 s`."""
    if not math.isfinite(seconds):
        return "an unknown time"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"
