"""The Ray Tune function trainable: one trial = its task family's loop with a checkpoint after every epoch.

The only module of `trainables` that imports Ray. The config it receives is built by the
orchestrator: `{"family": "mlr" | "ood", "trial_config": the family's config as a dict,
"trial_key": ..., "cell_key": ..., ...}`, or, for trials fused in a group, `{"family": ...,
MEMBERS: [each member's config as above], "trial_name": ..., ...}`: then every result holds each
member's epoch under MEMBERS (by trial key), and every checkpoint each member's state.
"""

from __future__ import annotations

import gc
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path

import ray
import torch
from ray import tune

from trainables.devices import trial_device
from trainables.lifecycle import TaskFamily
from trainables.tasks import MEMBER_ERRORS, MEMBERS, task_of

_STATE_FILE = "state.pt"


class FusedTrialsFailed(RuntimeError):
    """Members of a fused group failed (the others finished): the group's trial fails with them, so
    that running the command again retries them from their last checkpoint."""


def run_trial(config: dict) -> None:
    family = task_of(config)
    node_id = ray.get_runtime_context().get_node_id()  # which node ran each epoch, for the trial's run
    saved = _saved_state()
    try:
        if MEMBERS in config:
            _run_group(family, config[MEMBERS], saved, node_id)
            return
        for metrics, state in family.run(_trial_config(family, config), saved):
            _report({**metrics, "node_id": node_id}, state)
    finally:
        # A stopped trial (ASHA, Ctrl-C) must hand its GPU memory back before the actor is reused.
        saved = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _run_group(family: TaskFamily, members: list[dict], saved: dict | None, node_id: str) -> None:
    """Train the members together; report after each epoch what each member did, and checkpoint every member's state."""
    keys = [member["trial_key"] for member in members]
    states = [(saved or {}).get(MEMBERS, {}).get(key) for key in keys]
    failed: dict[str, str] = {}
    outcomes: Iterator[list] = family.run_group([_trial_config(family, member) for member in members], states)
    for epoch_outcomes in outcomes:
        epoch, errors = {}, {}
        for i, (key, outcome) in enumerate(zip(keys, epoch_outcomes)):
            if isinstance(outcome, BaseException):
                failed[key] = " ".join(f"{type(outcome).__name__}: {outcome}".split())
                errors[key] = {"error": failed[key], "traceback": "".join(traceback.format_exception(outcome))}
            elif outcome is not None:
                metrics, states[i] = outcome
                epoch[key] = {**metrics, "node_id": node_id}
        last = max((metrics["epoch"] for metrics in epoch.values()), default=0)
        _report({"epoch": last, MEMBERS: epoch, MEMBER_ERRORS: errors}, {MEMBERS: dict(zip(keys, states))})
    if failed:
        names = {member["trial_key"]: member["trial_name"] for member in members}
        first = next(iter(failed))
        raise FusedTrialsFailed(f"{len(failed)} of {len(keys)} fused trials failed; {names[first]}: {failed[first]}")


def _trial_config(family: TaskFamily, config: dict):
    """The trial's config, its `device: auto` resolved to the GPUs Ray gave this trial, if any (a GPU
    it cannot use is a one-line error)."""
    trial_config = family.config.model_validate(config["trial_config"])
    if "device" in type(trial_config).model_fields:
        device = trial_device(trial_config.device, len(ray.get_gpu_ids()))
        trial_config = trial_config.model_copy(update={"device": str(device)})
    return trial_config


def _saved_state() -> dict | None:
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        # Our own file, written below: it holds tensors and plain Python values only.
        return torch.load(Path(directory) / _STATE_FILE, weights_only=False)


def _report(metrics: dict, state: dict) -> None:
    with tempfile.TemporaryDirectory() as directory:
        torch.save(state, Path(directory) / _STATE_FILE)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
