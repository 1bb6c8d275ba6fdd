"""Filling the frozen-feature cache before any trial starts, on this machine.

Locally, and on a Ray cluster without any GPU, the driver encodes in its own process with every
CPU it may use as image-decoding workers (`trainables.features.fill`), saying first how long that
will take on a CPU; on a GPU, in a process of its own. A cluster's GPU nodes fill it with
`orchestrator.run.fill_cluster`. A fill interrupted midway resumes with the shards already stored,
since every shard is stored atomically under its own lock (`FeatureCache`).
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import torch

from trainables.features.cache import FeatureCache
from trainables.features.fill import encode_all

from orchestrator.family import in_spec
from orchestrator.run.entries import Entry, entries
from orchestrator.specs import ExperimentSpec, grid


def local_trial_device(spec: ExperimentSpec) -> torch.device:
    """The device this machine's trials compute on: `resources.device` where named; under `auto`, CUDA
    where they ask for GPUs and torch sees one, else the CPU."""
    if spec.resources.device != "auto":
        return torch.device(spec.resources.device)
    return torch.device("cuda" if spec.resources.gpus_per_trial > 0 and torch.cuda.is_available() else "cpu")


def fill_locally(plan: grid.Plan) -> None:
    """Encode everything the trials read (and pre-train a `synthetic` backbone) on this machine,
    on the device its trials use, a backbone at a time, with every CPU it may use as decoding workers.
    On a GPU this runs in a process of its own: the driver must not keep a CUDA context and the
    encoder's cached memory on the GPU its trials are about to share."""
    device = local_trial_device(plan.spec)
    if not own_process(device):
        _fill(plan, str(device))
        return
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as encoder:
        encoder.submit(_fill, plan, str(device)).result()


def own_process(device: torch.device) -> bool:
    """Whether a local fill on `device` runs in a process of its own (on CUDA)."""
    return device.type == "cuda"


def _fill(plan: grid.Plan, device: str) -> None:
    from trainables.backbone.weights import load_backbone
    from trainables.devices import default_workers
    from trainables.features.decoded import DecodedStore

    spec = plan.spec
    for family in in_spec(spec):  # the online trials' images, decoded and resized once
        for dataset, split, size in family.decoded_sets(plan):
            images = family.open_cached_set(dataset, split, spec.data_dir)
            print(f"Decoded store for dataset '{dataset.name}' ({split}, {size} px): under {spec.cache_dir / 'decoded'}", flush=True)
            DecodedStore(spec.cache_dir).images(images, size, default_workers(), progress=True)
    by_backbone: dict[str, dict[str, list[Entry]]] = {}
    for entry in entries(plan):
        by_backbone.setdefault(entry.backbone.model_dump_json(), {}).setdefault(entry.dataset.name, []).append(entry)
    for by_dataset in by_backbone.values():
        clip = load_backbone(next(iter(by_dataset.values()))[0].backbone, spec.data_dir, torch.device(device))
        for sets, members in by_dataset.items():
            kind = spec.features.mode if members[0].encoding == "dense" else "global embeddings"
            print(f"Feature cache for dataset '{sets}' ({members[0].label}, {kind}):", flush=True)
            summary = encode_all(
                clip, [(entry.open(spec.data_dir), entry.view, entry.encoding) for entry in members],
                FeatureCache(spec.cache_dir, augmentation=spec.features.augmentation), batch_size=encode_batch_size(spec),
                report=lambda line: print(f"  {line}", flush=True),
            )  # fmt: skip
            print(
                f"  {summary['encoded']} encoded, {summary['reused']} already cached, "
                f"{summary['skipped_images']} unreadable images skipped; backbone activation {summary['activation']}",
                flush=True,
            )




def encode_batch_size(spec: ExperimentSpec) -> int:
    """Images a fill encodes at once: the evaluation batch of the spec's first family (`Family.encode_batch_size`)."""
    return in_spec(spec)[0].encode_batch_size(spec)
