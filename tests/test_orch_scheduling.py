"""Resume, grow or start over: what the results folder and the MLflow store allow, decided before Ray starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainables.errors import UserInputError

from orchestrator.run.launch import prepare_results
from orchestrator.specs import spec_hash
from orchestrator.track.results_store import METADATA_FILE
from orchestrator.track.store import TrackingStore


@pytest.fixture
def spec(tracked_spec):
    return tracked_spec(setups=["baseline"], label_ratios=[0.5])


@pytest.fixture
def store(spec):
    return TrackingStore(spec.tracking_uri, spec.name)


def saved_experiment(folder: Path, digest: str, tracking_uri: str) -> None:
    """A results folder Tune can restore (its experiment state file) with the orchestrator's metadata."""
    folder.mkdir(parents=True)
    (folder / "tuner.pkl").write_bytes(b"")
    (folder / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    (folder / METADATA_FILE).write_text(json.dumps({"spec_hash": digest, "tracking_uri": tracking_uri}))


def test_the_same_spec_resumes_its_own_tune_experiment(spec, store):
    location = f"{spec.results}/{spec_hash(spec)}"
    saved_experiment(Path(location), spec_hash(spec), spec.tracking_uri)
    assert prepare_results(spec, spec_hash(spec), store, fresh=False) == (location, True)


def test_an_experiment_from_before_grids_grew_resumes_where_it_is(spec, store):
    saved_experiment(spec.state_dir, spec_hash(spec), spec.tracking_uri)  # Tune's state in <storage>/<name> itself
    assert prepare_results(spec, spec_hash(spec), store, fresh=False) == (spec.results, True)


def test_a_launch_killed_before_tunes_first_save_is_started_over(spec, store):
    location = Path(spec.results) / spec_hash(spec)
    location.mkdir(parents=True)
    (location / "tuner.pkl").write_bytes(b"")  # killed before Tune saved any state
    assert prepare_results(spec, spec_hash(spec), store, fresh=False) == (str(location), False)
    assert not location.exists()


def test_an_edited_spec_gets_a_tune_experiment_of_its_own(spec, store):
    saved_experiment(Path(spec.results) / "0ld0ld0ld0ld", "0ld0ld0ld0ld", spec.tracking_uri)
    assert prepare_results(spec, spec_hash(spec), store, fresh=False) == (f"{spec.results}/{spec_hash(spec)}", False)
    assert (Path(spec.results) / "0ld0ld0ld0ld" / "tuner.pkl").is_file()  # the earlier spec's results stay


def test_another_tracking_store_is_refused(spec, store, tmp_path):
    saved_experiment(spec.state_dir, spec_hash(spec), f"sqlite:///{tmp_path / 'other.db'}")
    with pytest.raises(UserInputError, match=f"resume with --tracking-uri sqlite:///{tmp_path / 'other.db'}"):
        prepare_results(spec, spec_hash(spec), store, fresh=False)


def test_fresh_deletes_the_folder_and_the_runs(spec, store, tmp_path):
    saved_experiment(spec.state_dir, "0ld0ld0ld0ld", spec.tracking_uri)
    store.launch_run("0ld0ld0ld0ld", "", tmp_path / "again.yaml", "c")
    assert prepare_results(spec, spec_hash(spec), store, fresh=True) == (f"{spec.results}/{spec_hash(spec)}", False)
    assert not spec.state_dir.exists()
    assert store.runs() == []


def test_trials_fit_per_node_not_on_the_cluster_totals(monkeypatch):
    from orchestrator.run import cluster
    from orchestrator.specs import Resources

    nodes = [{"NodeID": f"n{i}", "Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0}} for i in range(2)]
    monkeypatch.setattr(cluster, "alive_nodes", lambda: nodes)
    # Per node: min(4 // 1, 1 // 0.25) = 4, twice; min(4 // 2, 1 // 1) = 1, twice.
    assert cluster.trials_that_fit(Resources(cpus_per_trial=1, gpus_per_trial=0.25)) == 8
    assert cluster.trials_that_fit(Resources(cpus_per_trial=2, gpus_per_trial=1)) == 2
    # 8 CPUs in all, but never on one node: refused before anything is scheduled.
    with pytest.raises(UserInputError, match=r"needs 8 CPUs and 1 GPUs on one node .* 2 Ray node\(s\) have 4 CPUs and 1 GPUs"):
        cluster.trials_that_fit(Resources(cpus_per_trial=8, gpus_per_trial=1))
