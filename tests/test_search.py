"""The searcher that serves every cell (grid and Optuna modes) and ASHA within each cell."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from orchestrator.run.search import CellASHA, CellSearcher
from orchestrator.specs.grid import Plan


def drain(searcher: CellSearcher, prefix: str = "t", start: int = 0) -> list[dict]:
    """Ask for trials until the searcher says FINISHED."""
    configs = []
    for n in range(start, start + 1000):
        config = searcher.suggest(f"{prefix}{n}")
        if config == Searcher.FINISHED:
            return configs
        configs.append(config)
    raise AssertionError("the searcher never finished")


def test_grid_hands_out_every_trial_once_round_robin(make_spec):
    spec = make_spec(loss={"gamma_neg": [1, 3]})
    configs = drain(CellSearcher(Plan.of(spec)))
    assert len(configs) == 2 * 2 * 2
    pairs = {(c["cell_key"], c["trial_config"]["loss"]["gamma_neg"]) for c in configs}
    cell_keys = {f"{s}-shapes-r{r}-s1" for s in ("baseline", "dual_coop") for r in ("0.1", "0.5")}
    assert pairs == {(k, g) for k in cell_keys for g in (1.0, 3.0)}
    # Round robin: the first four trials are one per cell, so every cell starts at once.
    assert {c["cell_key"] for c in configs[:4]} == cell_keys
    assert len({c["trial_key"] for c in configs}) == 8


def test_grid_state_survives_save_and_restore(make_spec, tmp_path):
    spec = make_spec(loss={"gamma_neg": [1, 3]})
    first = CellSearcher(Plan.of(spec))
    before = [first.suggest(f"a{n}") for n in range(3)]
    first.save(str(tmp_path / "searcher.pkl"))
    second = CellSearcher(Plan.of(spec))
    second.restore(str(tmp_path / "searcher.pkl"))
    after = drain(second, "b")
    keys = [c["trial_key"] for c in before + after]
    assert len(keys) == 8 and len(set(keys)) == 8


def test_optuna_mode_samples_each_cell_within_the_ranges(make_spec, tmp_path):
    spec = make_spec(
        loss={"gamma_neg": {"low": 0, "high": 4}, "clip": {"low": 0.0, "high": 0.1}, "gamma_pos": 0.5},
        search={"kind": "optuna", "num_samples": 3, "seed": 7},
    )
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = CellSearcher(Plan.of(spec), storage)
    configs = drain(searcher)
    assert len(configs) == 4 * 3
    for config in configs:
        loss = config["trial_config"]["loss"]
        assert 0 <= loss["gamma_neg"] <= 4 and 0 <= loss["clip"] <= 0.1 and loss["gamma_pos"] == 0.5
    per_cell = {}
    for config in configs:
        per_cell.setdefault(config["cell_key"], []).append(config["trial_name"])
    assert all(sorted(names) == [f"{key}-t{n}" for n in (1, 2, 3)] for key, names in per_cell.items())
    # One study per cell in the database, each trial holding its Ray trial id.
    summaries = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}
    assert summaries == {key: 3 for key in per_cell}
    study = optuna.load_study(study_name=configs[0]["cell_key"], storage=storage)
    assert study.trials[0].user_attrs["ray_trial_id"] == "t0"
    assert study.trials[0].params["gamma_neg"] == configs[0]["trial_config"]["loss"]["gamma_neg"]


def test_optuna_is_told_results_and_failures(make_spec, tmp_path):
    spec = make_spec(loss={"gamma_neg": {"low": 0, "high": 4}}, search={"kind": "optuna", "num_samples": 2})
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = CellSearcher(Plan.of(spec), storage)
    first, second = searcher.suggest("r1"), searcher.suggest("r2")
    searcher.on_trial_complete("r1", result={"best_mAP": 42.5, "mAP": 40.0})
    searcher.on_trial_complete("r2", error=True)
    told = {
        t.user_attrs["ray_trial_id"]: (t.state, t.value)
        for key in (first["cell_key"], second["cell_key"])
        for t in optuna.load_study(study_name=key, storage=storage).trials
    }
    assert told == {"r1": (TrialState.COMPLETE, 42.5), "r2": (TrialState.FAIL, None)}


def test_optuna_search_continues_after_restore_and_fails_orphans(make_spec, tmp_path):
    spec = make_spec(
        setups=["baseline"], label_ratios=[0.5],
        loss={"gamma_neg": {"low": 0, "high": 4}}, search={"kind": "optuna", "num_samples": 4},
    )  # fmt: skip
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = CellSearcher(Plan.of(spec), storage)
    running = first.suggest("r1")
    first.suggest("r2")
    first.on_trial_complete("r2", result={"best_mAP": 10.0})
    first.save(str(tmp_path / "searcher.pkl"))
    # Asked after the last save: Ray never recorded this trial, so nothing will ever finish it.
    orphan = first.suggest("r3")

    restored = pickle.loads(pickle.dumps(CellSearcher(Plan.of(spec), storage)))  # Tune pickles the searcher
    restored.restore(str(tmp_path / "searcher.pkl"))
    rest = drain(restored, "s")
    assert len(rest) == 2
    restored.on_trial_complete("r1", result={"best_mAP": 30.0})
    states = {
        t.user_attrs["ray_trial_id"]: t.state
        for t in optuna.load_study(study_name=running["cell_key"], storage=storage).trials
    }
    assert states["r1"] == TrialState.COMPLETE and states["r2"] == TrialState.COMPLETE
    assert states["r3"] == TrialState.FAIL
    assert orphan["trial_name"] not in {c["trial_name"] for c in rest}


def _trial(trial_id: str, cell_key: str, family: str = "mlr", epochs: int = 10) -> SimpleNamespace:
    return SimpleNamespace(
        trial_id=trial_id, config={"cell_key": cell_key, "family": family, "trial_config": {"training": {"epochs": epochs}}}
    )


def test_asha_compares_trials_of_the_same_cell_only():
    scheduler = CellASHA(grace_period=1, reduction_factor=2)
    strong, weak, other = _trial("a1", "cell-a"), _trial("a2", "cell-a"), _trial("b1", "cell-b")
    for trial in (strong, weak, other):
        scheduler.on_trial_add(None, trial)
    assert scheduler.on_trial_result(None, strong, {"training_iteration": 1, "mAP": 80.0}) == TrialScheduler.CONTINUE
    # In cell a, 20 is below the rung's cutoff (the median of what it recorded: 80).
    assert scheduler.on_trial_result(None, weak, {"training_iteration": 1, "mAP": 20.0}) == TrialScheduler.STOP
    # Cell b's first trial is compared with nobody: a harder cell is not stopped by an easier one.
    assert scheduler.on_trial_result(None, other, {"training_iteration": 1, "mAP": 20.0}) == TrialScheduler.CONTINUE
    # max_t, the trials' epochs: the last epoch stops a trial.
    assert scheduler.on_trial_result(None, strong, {"training_iteration": 10, "mAP": 90.0}) == TrialScheduler.STOP


def test_asha_ranks_each_cell_by_its_familys_metric_and_epochs():
    """An OOD cell is halved on AUROC (what LAPT trials report), up to its own trials' epochs."""
    scheduler = CellASHA(grace_period=1, reduction_factor=2)
    strong, weak = _trial("o1", "lapt-cell", "ood", epochs=3), _trial("o2", "lapt-cell", "ood", epochs=3)
    for trial in (strong, weak):
        scheduler.on_trial_add(None, trial)
    assert scheduler.on_trial_result(None, strong, {"training_iteration": 1, "auroc": 90.0}) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, weak, {"training_iteration": 1, "auroc": 60.0}) == TrialScheduler.STOP
    assert scheduler.on_trial_result(None, strong, {"training_iteration": 3, "auroc": 95.0}) == TrialScheduler.STOP


def test_asha_survives_pickling_and_a_scheduler_pickled_before_metrics_came_from_families():
    scheduler = CellASHA(grace_period=1, reduction_factor=3)
    scheduler.on_trial_add(None, _trial("x", "c", epochs=4))
    copy = pickle.loads(pickle.dumps(scheduler))
    assert copy.on_trial_result(None, _trial("x", "c", epochs=4), {"training_iteration": 1, "mAP": 5.0}) == TrialScheduler.CONTINUE
    # The previous version's pickle held the metric and max_t among its settings: the cell's family's replace them.
    older = CellASHA(grace_period=1, reduction_factor=3)
    older._settings |= {"metric": "mAP", "max_t": 50}
    older.on_trial_add(None, _trial("y", "d", epochs=2))
    assert older.on_trial_result(None, _trial("y", "d", epochs=2), {"training_iteration": 2, "mAP": 5.0}) == TrialScheduler.STOP


def test_a_grown_grid_hands_out_only_the_trials_no_finished_run_holds(make_spec):
    plan = Plan.of(make_spec(loss={"gamma_neg": [1, 3]}))
    done = {t.config_hash for trials in list(plan.fixed_trials.values())[:2] for t in trials}
    configs = drain(CellSearcher(plan, finished=frozenset(done)))
    assert len(configs) == 8 - 4 and not done & {c["config_hash"] for c in configs}
    # What MLflow holds of finished runs (cell, config hash, trial key), old runs by their trial key alone.
    (old, new), (other, _) = list(plan.fixed_trials.values())[:2]
    runs = [(old.cell_key, None, old.trial_key), (new.cell_key, new.config_hash, new.trial_key), ("elsewhere", None, other.trial_key)]
    assert plan.finished(runs) == {old.config_hash, new.config_hash}


def test_a_cell_keeps_its_study_while_its_search_space_stays(make_spec, tmp_path):
    from orchestrator.families.mlr.trials import search_key
    from orchestrator.run.search import completed, study_names

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    searched = {"search": {"kind": "optuna", "num_samples": 2}, "setups": ["baseline"], "label_ratios": [0.5]}
    plan = Plan.of(make_spec(loss={"gamma_neg": {"low": 0, "high": 4}}, **searched))
    (cell,) = plan.cells
    assert study_names(plan, storage) == {cell.key: cell.key}  # the first study of a cell is named by it
    searcher = CellSearcher(plan, storage, studies=study_names(plan, storage))
    (config,) = [searcher.suggest("t0")]
    assert config["study"] == cell.key
    searcher.on_trial_complete("t0", {"best_mAP": 50.0})
    assert completed(storage, cell.key) == 1
    # More samples over the same space: the study continues, one more sample to draw.
    more = Plan.of(make_spec(loss={"gamma_neg": {"low": 0, "high": 4}}, **{**searched, "search": {"kind": "optuna", "num_samples": 3}}))
    assert study_names(more, storage) == {cell.key: cell.key}
    assert len(drain(CellSearcher(more, storage, studies={cell.key: cell.key}, budgets={cell.key: 3 - 1}), "u")) == 2
    # Another space: a new study of its own, the first one kept.
    narrower = Plan.of(make_spec(loss={"gamma_neg": {"low": 0, "high": 2}}, **searched))
    assert study_names(narrower, storage) == {cell.key: f"{cell.key}~{search_key(narrower.spec, cell)}"}
    assert cell.key in optuna.get_all_study_names(storage)
