"""Filling the frozen-feature cache before any trial starts, where the GPUs are.

Locally, and on a Ray cluster without any GPU, the driver encodes in its own process with every
CPU it may use as image-decoding workers (`trainables.cache_fill`), saying first how long that
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

import sys
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from trainables import cache_fill, data, features

from orchestrator.run.entries import Entry, entries
from orchestrator.specs import ExperimentSpec, grid
from orchestrator.track.trial_errors import user_error_cause


def fill_locally(plan: grid.Plan) -> None:
    """Encode everything the trials read (and pre-train a `synthetic` backbone) in this process,
    a backbone at a time, with every CPU it may use as decoding workers."""
    from trainables.backbones import load_backbone
    from trainables.clip import resolve_device

    spec = plan.spec
    by_backbone: dict[str, dict[str, list[Entry]]] = {}
    for entry in entries(plan):
        by_backbone.setdefault(entry.backbone.model_dump_json(), {}).setdefault(entry.dataset.name, []).append(entry)
    for by_dataset in by_backbone.values():
        clip = load_backbone(next(iter(by_dataset.values()))[0].backbone, spec.data_dir, resolve_device("auto"))
        for sets, members in by_dataset.items():
            kind = spec.features.mode if members[0].encoding == "dense" else "global embeddings"
            print(f"Feature cache for dataset '{sets}' ({members[0].label}, {kind}):", flush=True)
            summary = cache_fill.encode_all(
                clip, [(entry.open(spec.data_dir), entry.view, entry.encoding) for entry in members],
                features.FeatureCache(spec.cache_dir), batch_size=spec.training.eval_batch_size,
                report=lambda line: print(f"  {line}", flush=True),
            )  # fmt: skip
            print(
                f"  {summary['encoded']} encoded, {summary['reused']} already cached, "
                f"{summary['skipped_images']} unreadable images skipped; backbone activation {summary['activation']}",
                flush=True,
            )


@dataclass
class Report:
    """What a cluster fill did: shards encoded (by node id), re-encoded after an actor died, already stored."""

    encoded_by_node: dict[str, int]
    retried: int
    reused_shards: int
    entries: int


class ShardEncoder:
    """A Ray actor on one GPU (or none, where asked): encodes shards of cache entries and joins them.
    Backbones and datasets are built once per actor."""

    def __init__(self, cache_dir: Path, data_dir: Path, workers: int, batch_size: int):
        import ray

        self.cache = features.FeatureCache(cache_dir)
        self.data_dir = data_dir
        self.workers = workers
        self.batch_size = batch_size
        self.node_id = ray.get_runtime_context().get_node_id()
        self._backbones: dict[str, object] = {}  # by the backbone config's JSON
        self._datasets: dict[str, data.MultiLabelDataset] = {}  # by `Entry.dataset_key`

    def _open(self, entry: Entry):
        from trainables.backbones import load_backbone
        from trainables.clip import resolve_device

        backbone, dataset = entry.backbone.model_dump_json(), entry.dataset_key
        if backbone not in self._backbones:
            self._backbones[backbone] = load_backbone(entry.backbone, self.data_dir, resolve_device("auto"))
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
        self.cache.encode_shard(
            clip, dataset, entry.view, index, encoding=entry.encoding, batch_size=self.batch_size, device=clip.device,
            num_workers=self.workers,
        )  # fmt: skip
        return self.node_id

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
        _fill_group(spec, needed, nodes, sum(gpus[n][0] for n in nodes), workers, len(groups) > 1, report)
    where = ", ".join(f"{count} on {node[:8]}" for node, count in sorted(report.encoded_by_node.items()))
    print(
        f"Feature cache: {report.entries} entries; {sum(report.encoded_by_node.values())} shards encoded on the GPU nodes"
        + (f" ({where})" if where else "") + f", {report.reused_shards} already stored"
        + (f", {report.retried} encoded again after their actor died" if report.retried else ""),
        flush=True,
    )
    return report


def _fill_group(
    spec: ExperimentSpec, entries: list[Entry], nodes: list[str], actor_count: int, workers: int, pinned: bool, report: Report
) -> None:
    """Every entry's missing shards, encoded by `actor_count` actors on `nodes` (pinned there when
    each node fills its own cache), then joined."""
    import ray
    from ray.exceptions import RayActorError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    actor_class = ray.remote(ShardEncoder)
    options = {"num_gpus": 1, "num_cpus": workers, "max_restarts": 0}
    if pinned:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(nodes[0], soft=False)

    def start() -> object:
        return actor_class.options(**options).remote(spec.cache_dir, spec.data_dir, workers, spec.training.eval_batch_size)

    actors = [start() for _ in range(actor_count)]
    try:
        plans = _get([actors[i % len(actors)].plan.remote(entry) for i, entry in enumerate(entries)])
        queue = deque((entry, index, size) for entry, sizes in zip(entries, plans) for index, size in enumerate(sizes) if size)
        report.reused_shards += sum(1 for sizes in plans for size in sizes if not size)
        total = sum(size for _, _, size in queue)
        place = f" on node {nodes[0][:8]}" if pinned else ""
        in_flight = {}

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
                except RayActorError:  # its process or node died: a new actor takes the shard again
                    report.retried += 1
                    queue.appendleft(task)
                    actors.remove(actor)
                    actor = start()
                    actors.append(actor)
                else:
                    report.encoded_by_node[node] = report.encoded_by_node.get(node, 0) + 1
                    bar.update(task[2])
                hand_out(actor)
        _get([actors[i % len(actors)].assemble.remote(entry) for i, entry in enumerate(entries)])
    finally:
        for actor in actors:
            ray.kill(actor)


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
