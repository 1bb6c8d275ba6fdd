"""Delivering what MLflow missed while its server was down: the listed trials' runs rebuilt from Ray's results."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.track import results_store
from orchestrator.track.callback import MlflowCallback
from orchestrator.track.outage import Undelivered


def deliver_undelivered(tracking_uri: str, experiment_name: str, spec_hash: str, state_dir: Path, results: str) -> int:
    """Log what MLflow missed while its server was down (listed in `state_dir`), from Ray's results
    (by the Tune experiment that holds them; a list written before there were several: `results`,
    the experiment's folder or URI); return how many trials were delivered. Every listed trial's run
    is rebuilt to what Ray holds (epochs it already has are not logged again); a finished or failed
    trial's run is closed, an unfinished one stays RUNNING for Tune to continue. Needs Ray
    initialised (Tune reads its experiment state)."""
    from ray.tune import ExperimentAnalysis

    undelivered = Undelivered(state_dir)
    listed = undelivered.by_location()
    if not listed:
        return 0
    replay = MlflowCallback(tracking_uri, experiment_name, spec_hash)  # without results_dir: not guarded
    replay.setup()
    delivered = 0
    for location, trial_ids in listed.items():
        location = location or results
        fs, _ = results_store.open_location(location)
        for trial in ExperimentAnalysis(location).trials:
            if trial.trial_id not in trial_ids:
                continue
            replay.on_trial_start(0, [], trial)
            for line in (results_store.read_text(fs, f"{trial.path}/result.json") or "").splitlines():  # none before a first report
                replay.on_trial_result(0, [], trial, json.loads(line))
            if trial.status == "TERMINATED":
                replay.on_trial_complete(0, [], trial)
            elif trial.status == "ERROR":
                replay.on_trial_error(0, [], trial)
            delivered += 1
    undelivered.clear()
    return delivered
