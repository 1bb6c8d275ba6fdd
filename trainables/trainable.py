"""The Ray Tune function trainable: one trial = its task family's loop with a checkpoint after every epoch.

The only module of `trainables` that imports Ray. The config it receives is built by the
orchestrator: `{"family": "mlr" | "ood", "trial_config": the family's config as a dict,
"trial_key": ..., "cell_key": ..., ...}`.
"""

from __future__ import annotations

import gc
import tempfile
from pathlib import Path

import ray
import torch
from ray import tune

from trainables.devices import trial_device
from trainables.tasks import task_of

_STATE_FILE = "state.pt"


def run_trial(config: dict) -> None:
    family = task_of(config)
    trial_config = family.config.model_validate(config["trial_config"])
    if "device" in type(trial_config).model_fields:
        # `auto` on the GPUs Ray gave this trial, if any; a GPU it cannot use is a one-line error.
        device = trial_device(trial_config.device, len(ray.get_gpu_ids()))
        trial_config = trial_config.model_copy(update={"device": str(device)})
    state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            # Our own file, written below: it holds tensors and plain Python values only.
            state = torch.load(Path(directory) / _STATE_FILE, weights_only=False)
    node_id = ray.get_runtime_context().get_node_id()  # which node ran each epoch, for the trial's run
    try:
        for metrics, state in family.run(trial_config, state):
            metrics = {**metrics, "node_id": node_id}
            with tempfile.TemporaryDirectory() as directory:
                torch.save(state, Path(directory) / _STATE_FILE)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
    finally:
        # A stopped trial (ASHA, Ctrl-C) must hand its GPU memory back before the actor is reused.
        state = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
