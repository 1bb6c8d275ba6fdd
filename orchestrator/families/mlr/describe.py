"""What `describe` says of the MLR cells: their grid, how they train, and each setup's trainable
parameters and peak tensor memory on each dataset."""

from __future__ import annotations

import functools
import shutil
from typing import NamedTuple

from tabulate import tabulate

from orchestrator.families.mlr.cost import train_images
from orchestrator.specs import LoadedSpec


class Measured(NamedTuple):
    """What `measure` found on this machine's device, at the spec's precision."""

    params: dict[str, dict[str, int]]
    """{setup: {dataset: trainable parameters}}"""
    peaks: dict[str, dict[str, int]]
    """{setup: {dataset: peak tensor bytes of a trial}}"""
    backbone_bytes: int
    """The frozen backbone's weights and buffers: what a fused group holds once for all its members."""
    measured_on: str
    """`cpu, fp32`: the device type and precision."""

    @property
    def member_bytes(self) -> int:
        """The most a trial adds to a fused group: its peak beside the backbone, at the heaviest setup and dataset."""
        return max(b for by_dataset in self.peaks.values() for b in by_dataset.values()) - self.backbone_bytes


def measure(spec, setups: list[str]) -> Measured:
    """The trainable parameters and peak tensor bytes of a trial of each setup on each dataset, on
    the spec's backbone and each dataset's classes; measured once per process (`describe` prints
    them and bounds the fused groups by them).

    The backbone is built with random weights on this machine's device: neither count depends on
    the weights, and no weights need to be present to describe a spec.
    """
    return _measured(spec.model_dump_json(), tuple(setups))


@functools.lru_cache(maxsize=4)
def _measured(spec_json: str, setups: tuple[str, ...]) -> Measured:
    from trainables import data
    from trainables.backbone import load_clip, precision
    from trainables.devices import trial_device
    from trainables.mlr import memory
    from trainables.mlr import setups as registry

    from orchestrator.specs import ExperimentSpec

    spec = ExperimentSpec.model_validate_json(spec_json)
    device = trial_device("auto")
    backbone = load_clip(spec.backbone.model, None, spec.backbone.image_size, device=str(device))
    chosen, _ = precision.resolve(spec.training.precision, device)
    classnames = {d.name: data.classnames(d, spec.data_dir) for d in spec.datasets}
    params: dict[str, dict[str, int]] = {}
    peaks: dict[str, dict[str, int]] = {}
    for name in setups:
        params[name], peaks[name] = {}, {}
        for dataset, names in classnames.items():
            setup = registry.build(name, names, backbone, **spec.setup_options.get(name, {}))
            params[name][dataset] = registry.count_trainable(setup)
            peaks[name][dataset] = memory.mlr_trial_bytes(
                setup, backbone, spec.training.batch_size, spec.training.eval_batch_size, chosen
            )
    return Measured(params, peaks, memory.module_bytes(backbone), f"{device.type}, {chosen}")


def _packing(gpus_per_trial: float, largest_bytes: int) -> list[str]:
    """What a fractional `gpus_per_trial` asks of one GPU, at the largest trial's peak."""
    if not 0 < gpus_per_trial < 1:
        return []
    sharing = int(1 / gpus_per_trial)
    return [
        f"At gpus_per_trial {gpus_per_trial:g}, up to {sharing} trials share a GPU: at most "
        f"{sharing} x {largest_bytes / 2**30:.2f} = {sharing * largest_bytes / 2**30:.1f} GiB of tensors plus {sharing} CUDA contexts"
    ]


def _decoded_store(loaded: LoadedSpec) -> list[str]:
    """The `online` mode's decoded store: its size, and whether it fits the disk under cache_dir."""
    from trainables.features.decoded import DecodedStore

    spec = loaded.spec
    if spec.features.mode != "online":
        return []
    if not spec.features.decoded_store:
        return ["Decoded store: off (features.decoded_store: false): every epoch decodes and resizes every image"]
    sizes = {d.name: train_images(d) for d in spec.datasets}
    if None in sizes.values():
        sizes = {name: n for name, n in sizes.items() if n is not None}
        unknown = "; other datasets' sizes are known once their data is there"
    else:
        unknown = ""
    total = sum(DecodedStore.nbytes(n, spec.backbone.image_size) for n in sizes.values())
    folder = spec.cache_dir
    while not folder.exists():  # the first folder of cache_dir that exists: the disk it will be on
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    fits = "fits" if total <= free else "does NOT fit"
    per_dataset = ", ".join(f"{name} {DecodedStore.nbytes(n, spec.backbone.image_size) / 2**30:.1f} GiB" for name, n in sizes.items())
    return [
        f"Decoded store (features.decoded_store; uint8 at {spec.backbone.image_size} px under {spec.cache_dir / 'decoded'}): "
        f"{total / 2**30:.1f} GiB ({per_dataset}); {fits} in the {free / 2**30:.0f} GiB free there{unknown}"
    ]


def lines(loaded: LoadedSpec, setups: list[str], cells: list) -> dict[str, list[str]]:
    spec, backbone, resources = loaded.spec, loaded.spec.backbone, loaded.spec.resources
    counts, peaks, _, measured_on = measure(spec, setups)
    table = tabulate(
        [
            [setup, *(f"{n:,}" for n in counts[setup].values()), *(f"{b / 2**30:.2f}" for b in peaks[setup].values())]
            for setup in counts
        ],
        headers=["setup", *(f"{d.name} params" for d in spec.datasets), *(f"{d.name} GiB/trial" for d in spec.datasets)],
        colalign=("left", *("right" for _ in range(2 * len(spec.datasets)))),
    )
    axes = {"negation rates": backbone.negation_rates, "pre-training seeds": backbone.pretraining_seeds}
    varying = [f"{name} {', '.join(f'{v:g}' for v in values)}" for name, values in axes.items() if len(values) > 1]
    backbones = f"{len(backbone.configs())} backbones ({'; '.join(varying)}) x " if varying else ""
    return {
        "cells": [
            f"Cells: {len(cells)} = {len(spec.datasets)} datasets x {backbones}{len(setups)} setups x "
            f"{len(spec.label_ratios)} label ratios x {len(spec.seeds)} seeds",
        ],
        "grid": list(spec.loss.axes()),
        "training": [
            f"Training: {spec.training.epochs} epochs, batch {spec.training.batch_size}, features {spec.features.mode}",
            *_decoded_store(loaded),
        ],
        "details": [
            f"Trainable parameters and peak tensor memory of one trial on {backbone.model} at {backbone.image_size} px "
            f"(measured here: {measured_on}; batch {spec.training.batch_size}, eval batch {spec.training.eval_batch_size}; "
            "a GPU process adds its CUDA context):",
            table,
            *_packing(resources.gpus_per_trial, max(b for by_dataset in peaks.values() for b in by_dataset.values())),
            "",
        ],
    }
