"""Grid expansion: cells, loss grids, trial names and deterministic keys."""

from __future__ import annotations

import pytest

from trainables.mlr.config import TrialConfig

from orchestrator.families.mlr import trials as mlr_trials
from orchestrator.specs import grid

GRID = {
    "datasets": [
        {"name": "shapes", "kind": "synthetic", "synthetic_num_train": 8, "synthetic_num_test": 8},
        {"name": "blobs", "kind": "synthetic", "synthetic_num_train": 8, "synthetic_num_test": 8,
         "synthetic_num_classes": 4},  # fmt: skip
    ],
    "setups": ["baseline", "positive_coop", "negative_coop", "dual_coop"],
    "label_ratios": [0.1, 0.3, 0.5],
    "seeds": [1, 2],
}
"""The grid these tests expand: 2 datasets x 4 setups x 3 ratios x 2 seeds."""


@pytest.fixture
def make_spec(make_spec):
    """The conftest `make_spec` on GRID."""

    def make(**changes):
        return make_spec(**{**GRID, **changes})

    return make


def test_cells_are_the_product_of_datasets_setups_ratios_seeds(make_spec):
    spec = make_spec()
    cells = grid.cells(spec)
    assert len(cells) == 2 * 4 * 3 * 2
    expected = {
        f"{setup}-{dataset}-r{ratio}-s{seed}"
        for dataset in ("shapes", "blobs")
        for setup in ("baseline", "positive_coop", "negative_coop", "dual_coop")
        for ratio in ("0.1", "0.3", "0.5")
        for seed in (1, 2)
    }
    assert {cell.key for cell in cells} == expected


def test_one_trial_per_cell_without_loss_axes(make_spec):
    spec = make_spec()
    assert mlr_trials.trials_per_cell(spec) == 1
    trials = [t for cell in grid.cells(spec) for t in grid.grid_trials(spec, cell)]
    assert len(trials) == 48
    assert all(t.trial_name == t.cell_key for t in trials)
    assert "dual_coop-shapes-r0.3-s2" in {t.trial_name for t in trials}


def test_loss_lists_are_grid_axes_within_each_cell(make_spec):
    spec = make_spec(loss={"gamma_neg": [0, 2, 4], "clip": [0.0, 0.05], "gamma_pos": 1})
    assert mlr_trials.trials_per_cell(spec) == 3 * 2
    cell = grid.cells(spec)[0]
    trials = grid.grid_trials(spec, cell)
    settings = {(t.trial_config["loss"]["gamma_neg"], t.trial_config["loss"]["clip"]) for t in trials}
    assert settings == {(g, c) for g in (0.0, 2.0, 4.0) for c in (0.0, 0.05)}
    assert all(t.trial_config["loss"]["gamma_pos"] == 1.0 for t in trials)
    assert [t.trial_name for t in trials] == [f"{cell.key}-t{n}" for n in range(1, 7)]
    assert len({t.trial_key for t in trials}) == 6


def test_optuna_trials_per_cell_is_num_samples(make_spec):
    spec = make_spec(loss={"gamma_neg": {"low": 0, "high": 4}}, search={"kind": "optuna", "num_samples": 5})
    assert mlr_trials.trials_per_cell(spec) == 5


def test_trial_config_is_the_resolved_trial_config(make_spec, tmp_path):
    spec = make_spec(setup_options={"dual_coop": {"n_ctx": 4}})
    cell = next(c for c in grid.cells(spec) if c.key == "dual_coop-blobs-r0.5-s2")
    trial = grid.grid_trials(spec, cell)[0]
    config = TrialConfig.model_validate(trial.trial_config)
    assert (config.setup, config.dataset.name, config.label_ratio, config.seed) == ("dual_coop", "blobs", 0.5, 2)
    assert config.setup_options == {"n_ctx": 4}
    assert config.cache_dir == tmp_path / "runs" / "cache"
    assert config.data_dir == tmp_path / "runs" / "data"
    assert trial.as_config() == {
        "family": "mlr",
        "setup": "dual_coop",
        "trial_config": trial.trial_config,
        "trial_key": trial.trial_key,
        "config_hash": grid.config_hash(trial.trial_config),
        "cell_key": "dual_coop-blobs-r0.5-s2",
        "trial_name": "dual_coop-blobs-r0.5-s2",
    }
    assert trial.trial_key == f"dual_coop-blobs-r0.5-s2-{trial.as_config()['config_hash'][:8]}"


def test_trial_keys_are_deterministic_and_ignore_machine_paths(make_spec, tmp_path, monkeypatch):
    spec = make_spec()
    cell = grid.cells(spec)[0]
    key = grid.grid_trials(spec, cell)[0].trial_key
    assert key.startswith(f"{cell.key}-") and len(key) == len(cell.key) + 9
    assert grid.grid_trials(spec, cell)[0].trial_key == key
    moved = make_spec(cache_dir=str(tmp_path / "other-cache"), data_dir=str(tmp_path / "other-data"))
    assert grid.grid_trials(moved, grid.cells(moved)[0])[0].trial_key == key
    changed = make_spec(training={"epochs": 7})
    assert grid.grid_trials(changed, grid.cells(changed)[0])[0].trial_key != key


def test_plan_resolves_cells_and_fixed_trials_once(make_spec):
    spec = make_spec(loss={"gamma_neg": [1, 2]})
    plan = grid.Plan.of(spec)
    assert [cell.key for cell in plan.cells] == [cell.key for cell in grid.cells(spec)]
    assert plan.trials_per_cell == {cell.key: 2 for cell in plan.cells} and plan.total_trials == 2 * len(plan.cells)
    assert {key: [t.trial_key for t in trials] for key, trials in plan.fixed_trials.items()} == {
        cell.key: [t.trial_key for t in grid.grid_trials(spec, cell)] for cell in plan.cells
    }
    searched = grid.Plan.of(make_spec(loss={"gamma_neg": {"low": 0, "high": 4}}, search={"kind": "optuna", "num_samples": 3}))
    assert searched.fixed_trials == {} and searched.total_trials == 3 * len(searched.cells)
