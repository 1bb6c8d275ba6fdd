"""Checks against the Ray cluster a run joined, made before any trial is scheduled."""

from __future__ import annotations

import uuid
from pathlib import Path

from trainables.errors import UserInputError

from orchestrator.spec import Resources


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


def check_shared_storage(folder: Path) -> None:
    """Refuse a multi-node run whose results folder some node cannot see.

    Trial checkpoints are written where the trial runs and read where it resumes, and the driver
    reads every trial's results: Ray 2.7+ no longer syncs them between nodes, so the folder must be
    on a filesystem every node mounts. Checked for real: a marker file the driver writes must be
    visible from a task pinned to each node.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = alive_nodes()
    if len(nodes) < 2:
        return
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f".shared-storage-check-{uuid.uuid4().hex}"
    marker.write_text("written by the driver\n")

    @ray.remote(num_cpus=0)
    def sees(path: str) -> bool:
        return Path(path).exists()

    try:
        seen = ray.get([
            sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(str(marker))
            for node in nodes
        ])  # fmt: skip
    finally:
        marker.unlink()
    blind = [node for node, visible in zip(nodes, seen, strict=True) if not visible]
    if blind:
        names = ", ".join(f"{node['NodeManagerAddress']} ({node['NodeID'][:8]})" for node in blind)
        raise UserInputError(
            f"storage {folder.parent} is not shared: Ray node(s) {names} cannot see it; a multi-node run needs "
            "--storage on a filesystem every node mounts at the same path"
        )
