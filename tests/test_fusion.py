"""Fused trials on the orchestrator's side: which trials share a group and how many (`run.fusion`),
how a group's results become each member's (`track.members`), and what a spec's trials cost from a
measured profile (`describe --profile`)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from trainables.tasks import MEMBER_ERRORS, MEMBERS

from orchestrator.cost import makespan, span
from orchestrator.describe import describe
from orchestrator.family import named
from orchestrator.run import fusion
from orchestrator.run.fusion import Group, Sizing
from orchestrator.specs import load_spec
from orchestrator.specs.grid import Plan
from orchestrator.track.members import Members


def _sizes(groups: list[Group]) -> list[int]:
    return [len(group.members) for group in groups]


def test_the_trials_of_one_stream_are_grouped_and_spread_over_the_slots(make_spec):
    plan = Plan.of(make_spec())  # 2 setups x 2 ratios, one seed: one stream of 4 trials
    assert _sizes(fusion.groups(plan, frozenset(), Sizing(slots=1, members=None))) == [4]
    assert _sizes(fusion.groups(plan, frozenset(), Sizing(slots=2, members=None))) == [2, 2]
    assert _sizes(fusion.groups(plan, frozenset(), Sizing(slots=8, members=None))) == [1, 1, 1, 1]
    assert _sizes(fusion.groups(plan, frozenset(), Sizing(slots=1, members=3))) == [2, 2]  # as even as the bound allows
    every = [trial.trial_key for trials in plan.fixed_trials.values() for trial in trials]
    grouped = [member.trial_key for group in fusion.groups(plan, frozenset(), Sizing(2, None)) for member in group.members]
    assert sorted(grouped) == sorted(every)


def test_another_seed_is_another_stream(make_spec):
    plan = Plan.of(make_spec(seeds=[1, 2]))
    groups = fusion.groups(plan, frozenset(), Sizing(slots=1, members=None))
    assert _sizes(groups) == [4, 4]
    assert [{member.trial_config["seed"] for member in group.members} for group in groups] == [{1}, {2}]


def test_finished_trials_are_not_grouped_again(make_spec):
    plan = Plan.of(make_spec())
    trials = [trial for trials in plan.fixed_trials.values() for trial in trials]
    finished = frozenset(trial.config_hash for trial in trials[:3])
    (group,) = fusion.groups(plan, finished, Sizing(1, None))
    assert group.members == (trials[3],)
    assert fusion.groups(plan, frozenset(t.config_hash for t in trials), Sizing(1, None)) == []


@pytest.mark.parametrize("changes", [{"resources": {"fuse": "off"}}, {"resources": {"fuse": False}},
                                     {"scheduler": {"kind": "asha", "grace_period": 1}}])  # fmt: skip
def test_fuse_off_and_asha_run_every_trial_alone(make_spec, changes):
    spec = make_spec(**changes)
    assert not fusion.fusing(spec)
    assert _sizes(fusion.groups(Plan.of(spec), frozenset(), Sizing(1, None))) == [1, 1, 1, 1]


def test_a_family_without_a_group_loop_is_not_fused():
    assert named("mlr").task.run_group is not None
    assert named("ood").task.run_group is None  # LAPT trials gain nothing: each runs alone


def test_the_device_memory_bounds_the_members(make_spec):
    spec = make_spec()
    shared, member, _ = named("mlr").member_bytes(spec)
    assert shared > 0 and member > 0
    room = (shared + 2.5 * member) / fusion.MEMORY_SLACK  # two members fit, not three
    assert fusion.sizing(spec, 4, lambda: int(room)).members == 2
    assert fusion.sizing(spec, 4, lambda: None).members is None
    assert fusion.sizing(make_spec(resources={"max_members": 1}), 4, lambda: 10**12).members == 1
    unasked = lambda: pytest.fail("the device's memory is asked for (on a cluster, of a node) where nothing uses it")  # noqa: E731
    assert fusion.sizing(make_spec(resources={"fuse": "off"}), 4, unasked).members == 1
    assert fusion.sizing(make_spec(resources={"max_members": 3}), 4, lambda: 10**12).members == 3


def test_a_groups_config_holds_each_members_config_and_a_key_of_its_members(make_spec):
    plan = Plan.of(make_spec())
    trials = tuple(trial for trials in plan.fixed_trials.values() for trial in trials)
    config = Group(trials).as_config()
    assert config[MEMBERS] == [trial.as_config() for trial in trials]
    assert config["family"] == "mlr" and config["trial_name"] == f"fused4-{trials[0].trial_name}"
    assert config["trial_key"] == Group(trials[::-1]).key  # whatever the members' order
    assert Group(trials[:1]).as_config() == trials[0].as_config()  # a group of one is the trial itself


def _group_trial(plan: Plan, status: str = "RUNNING") -> SimpleNamespace:
    trials = tuple(trial for trials in plan.fixed_trials.values() for trial in trials)[:2]
    return SimpleNamespace(trial_id="g1", config=Group(trials).as_config(), last_result=None, status=status, checkpoint=None)


def test_a_groups_results_become_each_members_own(make_spec):
    plan = Plan.of(make_spec())  # 2 epochs
    group = _group_trial(plan)
    first, second = (config["trial_key"] for config in group.config[MEMBERS])
    members = Members()
    assert [m.trial_id for m in members.of(group)] == [f"g1/{first}", f"g1/{second}"]
    assert [m.status for m in members.of(group)] == ["RUNNING", "RUNNING"]

    reported, failed = members.record(group, {MEMBERS: {first: {"epoch": 1}, second: {"epoch": 1}}, MEMBER_ERRORS: {}, "hostname": "h"})
    assert [m.last_result for m in reported] == [{"epoch": 1, "hostname": "h"}] * 2 and failed == []
    error = {"error": "FloatingPointError: training loss is nan", "traceback": "Traceback ..."}
    reported, failed = members.record(group, {MEMBERS: {first: {"epoch": 2}}, MEMBER_ERRORS: {second: error}})
    assert [m.trial_id for m in reported] == [f"g1/{first}"] and reported[0].done
    assert [(m.trial_id, m.error, m.traceback) for m in failed] == [(f"g1/{second}", error["error"], "Traceback ...")]
    # A later result without them: each member keeps what it last was.
    assert [m.status for m in members.of(group)] == ["TERMINATED", "ERROR"]
    assert [m.last_result["epoch"] for m in members.of(group)] == [2, 1]


def test_a_ray_trial_alone_stands_for_itself():
    trial = SimpleNamespace(trial_id="t", config={"trial_key": "k"}, last_result={})
    assert Members().of(trial) == [trial]
    assert Members().record(trial, {"epoch": 1}) == ([trial], [])


def test_makespan_puts_the_longest_jobs_first_on_the_device_free_first():
    assert makespan([3, 3, 2, 2, 2], 2) == 7  # {3, 2, 2} and {3, 2}
    assert makespan([5, 1], 4) == 5
    assert makespan([1, 1, 1], 1) == 3


def test_describe_costs_a_spec_fused_and_unfused_from_a_profile(write_spec, minimal_spec, tmp_path):
    # 4 trials of one stream, 2 epochs of 8 training images; the profile's steps of batch 4.
    path = write_spec(minimal_spec(features={"mode": "online"}))
    profile = {"model": "RN-tiny", "image_size": 64, "batch": 4, "device": "test", "rows": [
        {"mode": "online", "members": 2, "setups": ["baseline", "dual_coop"], "shared_ms": 4000.0, "member_ms": [400.0, 1200.0]},
        {"mode": "cached", "members": 1, "setups": ["baseline"], "shared_ms": 1.0, "member_ms": [4.0]},
    ]}  # fmt: skip
    (tmp_path / "profile.json").write_text(json.dumps(profile))
    text = describe(load_spec(path, check_data=False), devices=1, profile=tmp_path / "profile.json")
    # Per image: shared 1 s, baseline 0.1 s, dual_coop 0.3 s; 2 epochs x 8 images = 16 image passes.
    images = 2 * 8
    fused = images * (1.0 + 2 * 0.1 + 2 * 0.3)  # one group of the 4 trials (one device): 28.8 s
    apart = images * 4 * 1.0 + images * (2 * 0.1 + 2 * 0.3)  # 76.8 s
    assert "Fused groups: 4 trials in 1 groups (4 members) for 1 trial slot" in text
    assert f"fused (1 groups)       {span(fused):>9s} of device time, {span(fused):>9s} wall" in text
    assert f"unfused (4 trials)     {span(apart):>9s} of device time, {span(apart):>9s} wall" in text
    assert (span(fused), span(apart)) == ("29 s", "1.3 min")
    assert "not the spec's RN-tiny" not in text  # the minimal spec's backbone is the profile's


def test_describe_without_a_profile_says_how_to_measure_one(write_spec, minimal_spec):
    text = describe(load_spec(write_spec(minimal_spec()), check_data=False), devices=2)
    assert "python -m benchmarks.gpu_check" in text and "--profile FILE" in text
    assert "Fused groups: 4 trials in 2 groups (2, 2 members) for 2 trial slots" in text


def test_trials_of_a_family_that_does_not_fuse_run_alone_and_leave_the_slots_to_the_groups(make_spec):
    from tests.test_ood_orchestrator import OOD_SECTION

    plan = Plan.of(make_spec(setups=["baseline", "dual_coop", "lapt"], ood=OOD_SECTION))
    groups = fusion.groups(plan, frozenset(), Sizing(slots=2, members=None))
    mlr = [group for group in groups if group.members[0].family == "mlr"]
    ood = [group for group in groups if group.members[0].family == "ood"]
    assert _sizes(mlr) == [2, 2]  # the 4 MLR trials still spread over both slots
    assert _sizes(ood) == [1] * 6 and len(plan.fixed_trials) == 4 + 6  # untuned variants once, two tuned at 2 ratios
