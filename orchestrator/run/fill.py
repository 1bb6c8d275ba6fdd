"""Filling the frozen-feature cache before any trial starts, where the GPUs are.

Locally, and on a Ray cluster without any GPU, the driver encodes in its own process with every
CPU it may use as image-decoding workers (`trainables.features.fill`), saying first how long that
will take on a CPU. On a cluster with GPU nodes the driver encodes nothing itself: one
`ShardEncoder` actor per GPU (holding that GPU and its share of its node's CPUs as decoding
workers) encodes the shards of every cache entry the trials will read, while the driver hands out
shards and shows one progress bar for the whole fill. An actor that dies (a lost node, a killed
worker) is replaced and its shard encoded again; a fill interrupted midway resumes with the shards
already stored, since every shard is stored atomically under its own lock (`FeatureCache`).

When the GPU nodes share `cache_dir` (checked with a marker file), they fill one cache together;
when each has its own disk there, each node's actors fill that node's cache.
"""

from __future__ import annotations

import multiprocessing
import sys
import uuid
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from trainables import data
from trainables.errors import UserInputError
from trainables.features.cache import FeatureCache
from trainables.features.fill import encode_all

from orchestrator.family import in_spec
from orchestrator.run.entries import Entry, entries
from orchestrator.specs import ExperimentSpec, grid
from orchestrator.track.trial_errors import user_error_cause

PLACEMENT_TIMEOUT_S = 120.0
"""How long a fill actor may wait for its GPU before the fill goes on without it."""

SHARD_TRIES = 3
"""Actors a shard is given to (each new, each on a GPU of its own) before the fill fails naming it."""


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
                FeatureCache(spec.cache_dir, augmentation=spec.features.augmentation), batch_size=spec.training.eval_batch_size,
                report=lambda line: print(f"  {line}", flush=True),
            )  # fmt: skip
            print(
                f"  {summary['encoded']} encoded, {summary['reused']} already cached, "
                f"{summary['skipped_images']} unreadable images skipped; backbone activation {summary['activation']}",
                flush=True,
            )


@dataclass
class Report:
    """What a cluster fill did: shards encoded (by node id), re-encoded after an actor died or failed, already stored."""

    encoded_by_node: dict[str, int]
    retried: int
    reused_shards: int
    entries: int


class ShardEncoder:
    """A Ray actor on one GPU (or none, where asked): encodes shards of cache entries and joins them.
    Backbones, datasets and each entry's image loader (its decoding workers) are made once per actor."""

    def __init__(self, cache_dir: Path, data_dir: Path, workers: int, batch_size: int, device: str, augmentation: str):
        import ray

        from trainables.devices import trial_device

        # A GPU Ray gave this actor that torch cannot use is a one-line error, not a fill on the CPU.
        self.device = trial_device(device, len(ray.get_gpu_ids()), who="feature-cache actor")
        self.cache = FeatureCache(cache_dir, augmentation=augmentation)
        self.cache_dir = cache_dir
        self.data_dir = data_dir
        self.workers = workers
        self.batch_size = batch_size
        self.node_id = ray.get_runtime_context().get_node_id()
        self._backbones: dict[str, object] = {}  # by the backbone config's JSON
        self._datasets: dict[str, data.MultiLabelDataset] = {}  # by `Entry.dataset_key`
        self._loaders: dict[str, object] = {}  # by `Entry.key`

    def ready(self) -> str:
        """This actor's node id, once it has been placed and started."""
        return self.node_id

    def _open(self, entry: Entry):
        from trainables.backbone.weights import load_backbone

        backbone, dataset = entry.backbone.model_dump_json(), entry.dataset_key
        if backbone not in self._backbones:
            self._backbones[backbone] = load_backbone(entry.backbone, self.data_dir, self.device)
        if dataset not in self._datasets:
            self._datasets[dataset] = entry.open(self.data_dir)
        return self._backbones[backbone], self._datasets[dataset]

    def plan(self, entry: Entry) -> list[int]:
        """The number of images of each shard of `entry` that no process has stored (0 for stored ones)."""
        clip, dataset = self._open(entry)
        key = self.cache.key(clip, dataset, entry.view, entry.encoding)
        missing = self.cache.missing_shards(key, len(dataset))
        return [len(rows) if i in missing else 0 for i, rows in enumerate(self.cache.shards(len(dataset)))]

    def encode(self, entry: Entry, index: int) -> str:
        """Encode shard `index` of `entry` (unless another process stored it); this actor's node id."""
        clip, dataset = self._open(entry)
        if entry.key not in self._loaders:
            self._loaders[entry.key] = self.cache.entry_loader(clip, dataset, entry.view, self.batch_size, self.workers)
        self.cache.encode_shard(clip, dataset, entry.view, index, encoding=entry.encoding, images=self._loaders[entry.key])
        return self.node_id

    def decode(self, family: str, dataset, split: str, size: int) -> None:
        """Build the decoded store of a family's image set (`Family.decoded_sets`), unless a process has."""
        from trainables.features.decoded import DecodedStore

        from orchestrator.family import named

        images = named(family).open_cached_set(dataset, split, self.data_dir)
        DecodedStore(self.cache_dir).images(images, size, self.workers)

    def assemble(self, entry: Entry) -> None:
        """Join `entry`'s shards into the cache entry (raising for unreadable images its dataset
        does not skip, as a trial reading it would)."""
        clip, dataset = self._open(entry)
        self.cache.dense_features(clip, dataset, entry.view, encoding=entry.encoding)


def cluster_gpus() -> dict[str, tuple[int, float]]:
    """{node id: (GPUs, CPUs)} of the alive nodes that have a GPU."""
    from orchestrator.run.cluster import alive_nodes

    return {
        node["NodeID"]: (int(node["Resources"]["GPU"]), node["Resources"].get("CPU", 0.0))
        for node in alive_nodes()
        if node["Resources"].get("GPU", 0) >= 1
    }


def fill_on_cluster(plan: grid.Plan) -> Report | None:
    """Fill the cache with the cluster's GPUs (see the module docstring); without any GPU in the
    cluster, fill in this process instead and return None."""
    spec = plan.spec
    gpus = cluster_gpus()
    if not gpus:
        print("No GPU in the Ray cluster: the driver encodes the feature cache itself.", flush=True)
        fill_locally(plan)
        return None
    needed = entries(plan)
    # Each actor holds its GPU's share of its node's CPUs, and decodes images with as many workers.
    workers = max(1, int(min(cpus / count for count, cpus in gpus.values())))
    groups = [list(gpus)] if _cache_shared(spec.cache_dir, list(gpus)) else [[node] for node in gpus]
    report = Report({}, 0, 0, len(needed))
    for nodes in groups:
        _fill_group(plan, needed, nodes, sum(gpus[n][0] for n in nodes), workers, len(groups) > 1, report)
    where = ", ".join(f"{count} on {node[:8]}" for node, count in sorted(report.encoded_by_node.items()))
    print(
        f"Feature cache: {report.entries} entries; {sum(report.encoded_by_node.values())} shards encoded on the GPU nodes"
        + (f" ({where})" if where else "") + f", {report.reused_shards} already stored"
        + (f", {report.retried} encoded again after their actor died" if report.retried else ""),
        flush=True,
    )
    return report


def _fill_group(
    plan: grid.Plan, entries: list[Entry], nodes: list[str], actor_count: int, workers: int, pinned: bool, report: Report
) -> None:
    """Every entry's missing shards, encoded by up to `actor_count` actors on `nodes` (pinned there
    when each node fills its own cache), then joined. The actors that get a GPU within
    `PLACEMENT_TIMEOUT_S` do the work; a shard whose actor dies or fails is handed to a new actor,
    up to `SHARD_TRIES` times, then the fill fails naming the shard and the node. Then they build the
    decoded stores of the online trials' images."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    spec = plan.spec

    actor_class = ray.remote(ShardEncoder)
    options = {"num_gpus": 1, "num_cpus": workers, "max_restarts": 0}
    if pinned:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(nodes[0], soft=False)
    place = f" on node {nodes[0][:8]}" if pinned else ""

    def start(count: int) -> list:
        """Up to `count` new actors: those placed within the timeout (the others are killed)."""
        started = [
            actor_class.options(**options).remote(
                spec.cache_dir, spec.data_dir, workers, spec.training.eval_batch_size, spec.resources.device,
                spec.features.augmentation,
            )
            for _ in range(count)
        ]  # fmt: skip
        readiness = {actor.ready.remote(): actor for actor in started}
        placed, _ = ray.wait(list(readiness), num_returns=len(readiness), timeout=PLACEMENT_TIMEOUT_S)
        # An actor that started but cannot use its GPU raises here: one line naming the driver.
        node_of.update((id(readiness[ref]), node) for ref, node in zip(placed, _get(placed)))
        for ref, actor in readiness.items():
            if ref not in placed:
                ray.kill(actor)
        return [readiness[ref] for ref in placed]

    node_of: dict[int, str] = {}  # id of a placed actor -> its node id

    actors = start(actor_count)
    if not actors:
        raise UserInputError(
            f"no feature-cache actor{place} got a GPU within {PLACEMENT_TIMEOUT_S:g} s (each asks for 1 GPU and "
            f"{workers} CPUs): free a GPU, or fill the cache before other work takes them (`orchestrator cache SPEC --address ...`)"
        )
    if len(actors) < actor_count:
        print(f"Feature cache{place}: {len(actors)} of {actor_count} GPU actors placed within {PLACEMENT_TIMEOUT_S:g} s; "
              "going on with those", flush=True)  # fmt: skip
    try:
        plans = _get([actors[i % len(actors)].plan.remote(entry) for i, entry in enumerate(entries)])
        queue = deque((entry, index, size) for entry, sizes in zip(entries, plans) for index, size in enumerate(sizes) if size)
        report.reused_shards += sum(1 for sizes in plans for size in sizes if not size)
        total = sum(size for _, _, size in queue)
        in_flight, tries = {}, {}

        def hand_out(actor) -> None:
            """The next shard to `actor`, if any is left."""
            if queue:
                task = queue.popleft()
                in_flight[actor.encode.remote(*task[:2])] = (actor, task)

        with tqdm(total=total, unit="img", desc=f"feature cache{place}", disable=None, file=sys.stdout) as bar:
            for actor in actors:
                hand_out(actor)
            while in_flight:
                (done,), _ = ray.wait(list(in_flight), num_returns=1)
                actor, task = in_flight.pop(done)
                try:
                    node = _get(done)
                except (RayActorError, RayTaskError) as error:  # its node died, or it failed (a CUDA error): a new actor
                    entry, index, _ = task
                    tries[entry.key, index] = tries.get((entry.key, index), 0) + 1
                    if tries[entry.key, index] >= SHARD_TRIES:
                        raise UserInputError(
                            f"the feature cache's shard {index} of {entry.dataset.name}/{entry.split} failed on "
                            f"{SHARD_TRIES} actors, the last on node {node_of[id(actor)][:8]}: {_last_line(error)}"
                        ) from None
                    report.retried += 1
                    queue.appendleft(task)
                    actors.remove(actor)
                    ray.kill(actor)
                    replacement = start(1)
                    actors.extend(replacement)
                    for new in replacement:
                        hand_out(new)
                    if not actors:
                        raise UserInputError(
                            f"the feature cache lost its last actor, and no new one got a GPU within {PLACEMENT_TIMEOUT_S:g} s"
                        ) from None
                    continue
                report.encoded_by_node[node] = report.encoded_by_node.get(node, 0) + 1
                bar.update(task[2])
                hand_out(actor)
        _get([actors[i % len(actors)].assemble.remote(entry) for i, entry in enumerate(entries)])
        # The online trials' images, decoded and resized once where they read them.
        decoded = [(family.name, *found) for family in in_spec(spec) for found in family.decoded_sets(plan)]
        _get([actors[i % len(actors)].decode.remote(*found) for i, found in enumerate(decoded)])
    finally:
        for actor in actors:
            ray.kill(actor)


def _last_line(error: BaseException) -> str:
    """The last line of a remote error: its exception, without the traceback Ray prepends."""
    cause = getattr(error, "cause", None)
    text = str(cause if cause is not None else error).strip()
    return text.splitlines()[-1] if text else type(error).__name__


def _get(refs):
    """`ray.get(refs)`, with a user's error raised in a task (an unreadable image, a missing dataset)
    raised here as itself: one line, not a traceback from a remote process."""
    import ray
    from ray.exceptions import RayTaskError

    try:
        return ray.get(refs)
    except RayTaskError as error:
        cause = user_error_cause(error)
        if cause is not None:
            raise cause from None
        raise


@dataclass(frozen=True)
class _Marker:
    """A file written on one node and looked for on the others."""

    path: Path

    def touch(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("written by the first GPU node\n")

    def seen(self) -> bool:
        return self.path.is_file()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _cache_shared(cache_dir: Path, nodes: list[str]) -> bool:
    """Whether every GPU node sees the same `cache_dir`: a marker written on the first node is looked for on each."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if len(nodes) < 2:
        return True
    marker = _Marker(Path(cache_dir) / f".shared-cache-check-{uuid.uuid4().hex}")

    @ray.remote(num_cpus=0)
    def run(method: str) -> bool | None:
        return getattr(marker, method)()

    def on(node: str):
        return run.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))

    ray.get(on(nodes[0]).remote("touch"))
    try:
        return all(ray.get([on(node).remote("seen") for node in nodes[1:]]))
    finally:
        ray.get(on(nodes[0]).remote("remove"))
