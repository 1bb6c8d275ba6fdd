"""Filling the frozen-feature cache with a Ray cluster's GPUs, before any trial starts.

The driver encodes nothing itself: one `ShardEncoder` actor per GPU (holding that GPU and its
share of its node's CPUs as decoding workers) encodes the shards of every cache entry the trials
will read, while the driver hands out shards and shows one progress bar for the whole fill. An
actor that dies (a lost node, a killed worker) is replaced and its shard encoded again. Without any
GPU in the cluster the driver fills it itself (`orchestrator.run.fill`).

When the GPU nodes share `cache_dir` (checked with a marker file), they fill one cache together;
when each has its own disk there, each node's actors fill that node's cache.
"""

from __future__ import annotations

import sys
from collections import deque
from dataclasses import dataclass

from tqdm.auto import tqdm

from trainables.errors import UserInputError

from orchestrator.family import in_spec
from orchestrator.run import cluster
from orchestrator.run.entries import Entry, entries
from orchestrator.run.fill import encode_batch_size, fill_locally
from orchestrator.run.shard_encoder import ShardEncoder
from orchestrator.specs import grid
from orchestrator.track.trial_errors import user_error_cause

PLACEMENT_TIMEOUT_S = 120.0
"""How long a fill actor may wait for its GPU before the fill goes on without it."""

SHARD_TRIES = 3
"""Actors a shard is given to (each new, each on a GPU of its own) before the fill fails naming it."""


@dataclass
class FillSummary:
    """What a cluster fill did: shards encoded (by node id), re-encoded after an actor died or failed, already stored."""

    encoded_by_node: dict[str, int]
    retried: int
    reused_shards: int
    entries: int


def cluster_gpus() -> dict[str, tuple[int, float]]:
    """{node id: (GPUs, CPUs)} of the alive nodes that have a GPU."""

    return {
        node["NodeID"]: (int(node["Resources"]["GPU"]), node["Resources"].get("CPU", 0.0))
        for node in cluster.alive_nodes()
        if node["Resources"].get("GPU", 0) >= 1
    }


def fill_on_cluster(plan: grid.Plan) -> FillSummary | None:
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
    groups = [list(gpus)] if cluster.shares_folder(spec.cache_dir, list(gpus)) else [[node] for node in gpus]
    report = FillSummary({}, 0, 0, len(needed))
    for nodes in groups:
        _GroupFill(plan, nodes, workers, len(groups) > 1, report).run(needed, sum(gpus[n][0] for n in nodes))
    where = ", ".join(f"{count} on {node[:8]}" for node, count in sorted(report.encoded_by_node.items()))
    print(
        f"Feature cache: {report.entries} entries; {sum(report.encoded_by_node.values())} shards encoded on the GPU nodes"
        + (f" ({where})" if where else "") + f", {report.reused_shards} already stored"
        + (f", {report.retried} encoded again after their actor died" if report.retried else ""),
        flush=True,
    )
    return report


class _GroupFill:
    """Every entry's missing shards, encoded by up to `actor_count` actors on `nodes` (pinned there
    when each node fills its own cache), then joined. The actors that get a GPU within
    `PLACEMENT_TIMEOUT_S` do the work; a shard whose actor dies or fails is handed to a new actor,
    up to `SHARD_TRIES` times, then the fill fails naming the shard and the node. Then they build the
    decoded stores of the online trials' images."""

    def __init__(self, plan: grid.Plan, nodes: list[str], workers: int, pinned: bool, summary: FillSummary):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.plan, self.workers, self.summary = plan, workers, summary
        self.actor_class = ray.remote(ShardEncoder)
        self.options = {"num_gpus": 1, "num_cpus": workers, "max_restarts": 0}
        if pinned:
            self.options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(nodes[0], soft=False)
        self.place = f" on node {nodes[0][:8]}" if pinned else ""
        self.actors: list = []
        self.node_of: dict[int, str] = {}  # id of a placed actor -> its node id
        self.queue: deque = deque()  # (entry, shard index, images) not handed out yet
        self.in_flight: dict = {}  # task ref -> (actor, (entry, shard index, images))
        self.tries: dict[tuple[str, int], int] = {}

    def start(self, count: int) -> list:
        """Up to `count` new actors: those placed within the timeout (the others are killed)."""
        import ray

        spec = self.plan.spec
        started = [
            self.actor_class.options(**self.options).remote(
                spec.cache_dir, spec.data_dir, self.workers, encode_batch_size(spec), spec.resources.device, spec.features.augmentation,
            )
            for _ in range(count)
        ]  # fmt: skip
        readiness = {actor.ready.remote(): actor for actor in started}
        placed, _ = ray.wait(list(readiness), num_returns=len(readiness), timeout=PLACEMENT_TIMEOUT_S)
        # An actor that started but cannot use its GPU raises here: one line naming the driver.
        self.node_of.update((id(readiness[ref]), node) for ref, node in zip(placed, _get(placed)))
        for ref, actor in readiness.items():
            if ref not in placed:
                ray.kill(actor)
        return [readiness[ref] for ref in placed]

    def run(self, entries: list[Entry], actor_count: int) -> None:
        import ray

        self.actors = self.start(actor_count)
        if not self.actors:
            raise UserInputError(
                f"no feature-cache actor{self.place} got a GPU within {PLACEMENT_TIMEOUT_S:g} s (each asks for 1 GPU and "
                f"{self.workers} CPUs): free a GPU, or fill the cache before other work takes them (`orchestrator cache SPEC --address ...`)"
            )
        if len(self.actors) < actor_count:
            print(f"Feature cache{self.place}: {len(self.actors)} of {actor_count} GPU actors placed within "
                  f"{PLACEMENT_TIMEOUT_S:g} s; going on with those", flush=True)  # fmt: skip
        try:
            self.encode(entries)
            self._each_actor([(actor.assemble, (entry,)) for actor, entry in self._spread(entries)])
            # The online trials' images, decoded and resized once where they read them.
            decoded = [(family.name, *found) for family in in_spec(self.plan.spec) for found in family.decoded_sets(self.plan)]
            self._each_actor([(actor.decode, found) for actor, found in self._spread(decoded)])
        finally:
            for actor in self.actors:
                ray.kill(actor)

    def encode(self, entries: list[Entry]) -> None:
        """Every missing shard, handed to the actors one at a time as they finish one, with one progress bar."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        plans = self._each_actor([(actor.plan, (entry,)) for actor, entry in self._spread(entries)])
        self.queue.extend((entry, index, size) for entry, sizes in zip(entries, plans) for index, size in enumerate(sizes) if size)
        self.summary.reused_shards += sum(1 for sizes in plans for size in sizes if not size)
        total = sum(size for _, _, size in self.queue)
        with tqdm(total=total, unit="img", desc=f"feature cache{self.place}", disable=None, file=sys.stdout) as bar:
            for actor in self.actors:
                self.hand_out(actor)
            while self.in_flight:
                (done,), _ = ray.wait(list(self.in_flight), num_returns=1)
                actor, task = self.in_flight.pop(done)
                try:
                    node = _get(done)
                except (RayActorError, RayTaskError) as error:  # its node died, or it failed (a CUDA error): a new actor
                    self.replace(actor, task, error)
                    continue
                self.summary.encoded_by_node[node] = self.summary.encoded_by_node.get(node, 0) + 1
                bar.update(task[2])
                self.hand_out(actor)

    def hand_out(self, actor) -> None:
        """The next shard to `actor`, if any is left."""
        if self.queue:
            task = self.queue.popleft()
            self.in_flight[actor.encode.remote(*task[:2])] = (actor, task)

    def replace(self, actor, task: tuple, error: BaseException) -> None:
        """A failed shard back to the queue and its actor replaced, unless the shard failed `SHARD_TRIES` times."""
        import ray

        entry, index, _ = task
        self.tries[entry.key, index] = self.tries.get((entry.key, index), 0) + 1
        if self.tries[entry.key, index] >= SHARD_TRIES:
            raise UserInputError(
                f"the feature cache's shard {index} of {entry.dataset.name}/{entry.split} failed on "
                f"{SHARD_TRIES} actors, the last on node {self.node_of[id(actor)][:8]}: {_last_line(error)}"
            ) from None
        self.summary.retried += 1
        self.queue.appendleft(task)
        self.actors.remove(actor)
        ray.kill(actor)
        replacement = self.start(1)
        self.actors.extend(replacement)
        for new in replacement:
            self.hand_out(new)
        if not self.actors:
            raise UserInputError(
                f"the feature cache lost its last actor, and no new one got a GPU within {PLACEMENT_TIMEOUT_S:g} s"
            ) from None

    def _spread(self, items: list) -> list[tuple]:
        """Each item with the actor that handles it, round robin."""
        return [(self.actors[i % len(self.actors)], item) for i, item in enumerate(items)]

    @staticmethod
    def _each_actor(calls: list[tuple]) -> list:
        return _get([method.remote(*args) for method, args in calls])


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
