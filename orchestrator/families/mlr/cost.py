"""What the MLR trials of a spec cost, from a measured profile (`describe SPEC --profile FILE`).

A profile is what `benchmarks.fused --json` prints, or the `fused` part of `benchmarks.gpu_check`'s
JSON: per features mode, a group step's shared part (the batch read, augmented and encoded once, or
gathered from the cache) and each member's optimiser step, at one model, image size and batch. A
trial's training costs its epochs x its training images at those per-image seconds; a fused
group pays the shared part once and every member's part. Evaluation and the feature-cache fill are
left out (both once per epoch or per dataset, small beside training at COCO's size).
"""

from __future__ import annotations

import statistics

KNOWN_IMAGES = {"coco": (82_081, 40_137), "voc": (5_011, 4_952)}
"""(train, test) images of the datasets whose size is known without their data: COCO 2014 (images
with annotations) and VOC 2007 (trainval, test)."""


def train_images(dataset) -> int | None:
    """How many training images a dataset config has, where that is known without reading its data."""
    if dataset.kind == "synthetic":
        return dataset.synthetic_num_train
    return KNOWN_IMAGES.get(dataset.kind, (None, None))[0]


def profile_rows(profile: dict) -> list[dict]:
    """The fused benchmark's rows of a profile (`benchmarks.fused --json`, or `gpu_check`'s `fused`)."""
    rows = profile.get("rows") or profile.get("fused", {}).get("rows")
    if not rows:
        raise ValueError("it holds no fused-group rows (benchmarks.fused --json, or benchmarks.gpu_check's JSON)")
    return rows


def per_image_seconds(profile: dict, mode: str) -> tuple[float, dict[str, float], float] | None:
    """(shared seconds per image, {setup: member seconds per image}, the mean member's) measured in
    features mode `mode`; None: the profile did not measure that mode."""
    rows = [row for row in profile_rows(profile) if row["mode"] == mode]
    if not rows:
        return None
    batch = (profile.get("fused") or profile)["batch"]
    shared = statistics.median(row["shared_ms"] for row in rows) / 1000 / batch
    by_setup: dict[str, list[float]] = {}
    for row in rows:
        for setup, ms in zip(row.get("setups", []), row["member_ms"]):
            by_setup.setdefault(setup, []).append(ms / 1000 / batch)
    mean = statistics.mean(ms / 1000 / batch for row in rows for ms in row["member_ms"])
    return shared, {setup: statistics.median(values) for setup, values in by_setup.items()}, mean


def group_seconds(spec, profile: dict, configs: list) -> tuple[float, list[float]] | None:
    """Seconds of a group's shared part over its training and of each member's part (a trial alone:
    one member); None where the profile or the dataset's size does not say."""
    measured = per_image_seconds(profile, spec.features.mode)
    images = train_images(configs[0].dataset)
    if measured is None or images is None:
        return None
    shared, by_setup, mean = measured
    epochs_images = configs[0].training.epochs * images
    return shared * epochs_images, [by_setup.get(config.setup, mean) * epochs_images for config in configs]


def profile_notes(spec, profile: dict) -> list[str]:
    """Where the profile was measured, and how it differs from the spec's trials."""
    setting = profile.get("fused") or profile
    notes = [f"{setting.get('model')} at {setting.get('image_size')} px, batch {setting.get('batch')}, on {setting.get('device')}"]
    backbone = spec.backbone
    if (setting.get("model"), setting.get("image_size")) != (backbone.model, backbone.image_size):
        notes.append(f"not the spec's {backbone.model} at {backbone.image_size} px: the figures are the profile's")
    if per_image_seconds(profile, spec.features.mode) is None:
        notes.append(f"it has no {spec.features.mode} rows: measure with --modes {spec.features.mode}")
    unknown = [d.name for d in spec.datasets if train_images(d) is None]
    if unknown:
        notes.append(f"the size of {', '.join(unknown)} is not known without its data: its trials are not counted")
    return notes
