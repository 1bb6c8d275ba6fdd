"""Checks against the Ray cluster a run joined, made before any trial is scheduled."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs

from trainables.errors import UserInputError

from orchestrator.specs import Resources, is_uri
from orchestrator.track import results_store


def alive_nodes() -> list[dict]:
    import ray

    return [node for node in ray.nodes() if node["Alive"]]


def trials_that_fit(resources: Resources) -> int:
    """How many trials the cluster's nodes run at once; refuse resources no single node has.

    A trial's CPUs and GPUs must come from one node, so the check is per node, not on the totals.
    """
    nodes = alive_nodes()
    fits = 0
    for node in nodes:
        have = node["Resources"]
        on_node = int(have.get("CPU", 0) // resources.cpus_per_trial)
        if resources.gpus_per_trial > 0:
            on_node = min(on_node, int(have.get("GPU", 0) // resources.gpus_per_trial))
        fits += on_node
    if fits == 0:
        largest = ", ".join(
            f"{node['Resources'].get('CPU', 0):g} CPUs and {node['Resources'].get('GPU', 0):g} GPUs" for node in nodes
        )
        raise UserInputError(
            f"a trial needs {resources.cpus_per_trial:g} CPUs and {resources.gpus_per_trial:g} GPUs on one node "
            f"(resources.*_per_trial) but the {len(nodes)} Ray node(s) have {largest or 'nothing'}"
        )
    return fits


def check_shared_storage(results: str) -> None:
    """Refuse a multi-node run whose results (a folder or an object store URI) some node cannot reach.

    Trial checkpoints are written where the trial runs and read where it resumes, and the driver
    reads every trial's results: Ray 2.7+ no longer syncs them between nodes, so they must live on a
    filesystem every node mounts, or in an object store every node has credentials for. Checked for
    real: a marker the driver writes must be readable from a task pinned to each node.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = alive_nodes()
    if len(nodes) < 2:
        return
    fs, path = results_store.open_location(results)
    marker = f"{path}/.shared-storage-check-{uuid.uuid4().hex}"
    with results_store.reaching(results):
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(marker) as stream:
            stream.write(b"written by the driver\n")

    @ray.remote(num_cpus=0)
    def reads(location: str, name: str) -> str | None:
        """None if this node reads the marker, else why not."""
        try:
            node_fs, _ = pyarrow.fs.FileSystem.from_uri(location)
            with node_fs.open_input_stream(name) as stream:
                stream.read()
        except OSError as error:
            return results_store.first_line(error)
        return None

    try:
        problems = ray.get([
            reads.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(results, marker)
            for node in nodes
        ])  # fmt: skip
    finally:
        with results_store.reaching(results):
            fs.delete_file(marker)
    blind = [(node, problem) for node, problem in zip(nodes, problems, strict=True) if problem is not None]
    if blind:
        names = ", ".join(f"{node['NodeManagerAddress']} ({node['NodeID'][:8]})" for node, _ in blind)
        if is_uri(results):
            raise UserInputError(
                f"storage {results} is not reachable from Ray node(s) {names}: {blind[0][1]}; every node needs "
                "the store's endpoint and credentials in its environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...)"
            )
        raise UserInputError(
            f"storage {results.rsplit('/', 1)[0]} is not shared: Ray node(s) {names} cannot see it; a multi-node run "
            "needs --storage on a filesystem every node mounts at the same path, or an object store URI (s3://bucket/prefix)"
        )


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


def shares_folder(folder: Path, nodes: list[str]) -> bool:
    """Whether every one of `nodes` sees the same `folder` (the feature cache): a marker written on the
    first node is looked for on each."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if len(nodes) < 2:
        return True
    marker = _Marker(Path(folder) / f".shared-cache-check-{uuid.uuid4().hex}")

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
