"""The trial-step benchmark compares like with like: both paths compute the same loss on the same batch."""

from __future__ import annotations

import json

import pytest
import torch

from trainables.mlr import setups

from benchmarks import trial_step


@pytest.mark.parametrize("requested", ["auto", "fp32"])
@pytest.mark.parametrize("name", setups.names())
def test_reference_and_project_paths_give_the_same_first_loss(name, requested):
    rows = [trial_step.measure(name, path, "RN-tiny", 64, 4, 10, 1, requested) for path in trial_step.paths(torch.device("cpu"))]
    (summary,) = trial_step.compare(rows)
    assert summary["loss_agrees"], summary
    assert rows[0]["precision"] == "fp32"
    if requested == "fp32":
        assert rows[1]["precision"] == "fp32" and summary["loss_relative_difference"] <= 1e-3


@pytest.mark.parametrize("name", ["positive_coop", "dual_coop"])
def test_full_length_prompts_give_the_truncated_prompts_features(tiny_rn, name):
    truncated, full = (trial_step.build(name, tiny_rn, 5, path) for path in ("project", "reference"))
    learners = [m for m in full.modules() if isinstance(m, trial_step.PromptLearner)]
    assert learners and all(learner.token_ids.shape[1] == tiny_rn.context_length for learner in learners)
    with torch.no_grad():
        torch.testing.assert_close(full.class_embeddings(), truncated.class_embeddings(), atol=1e-5, rtol=1e-5)


def test_grid_cost_counts_every_trial_step_and_the_cache_fill(make_spec):
    from benchmarks.grid_cost import grid_cost
    from orchestrator.specs.grid import Plan

    # 2 setups x 2 ratios x 1 seed, 2 epochs at batch 32 (the minimal spec), 100 train and 50 test images.
    plan = Plan.of(make_spec(training={"epochs": 2, "batch_size": 32}))
    seconds = {"reference": {"baseline": 2.0, "dual_coop": 10.0}, "project": {"baseline": 0.01, "dual_coop": 1.0}}
    hours = grid_cost(plan, seconds, {"shapes": (100, 50)})
    steps = 2 * 4  # epochs x ceil(100 / 32)
    assert hours["reference"] == pytest.approx(2 * steps * (2.0 + 10.0) / 3600)
    fill = 5 * 2.0  # ceil(150 / 32) image-encoder passes at the reference Baseline's step
    assert hours["project"] == pytest.approx((2 * steps * (0.01 + 1.0) + fill) / 3600)


def test_the_gpu_check_runs_small_on_a_cpu_and_writes_a_profile(tmp_path):
    from benchmarks import gpu_check

    out = gpu_check.main(["--quick", "--out", str(tmp_path / "check")])
    report = json.loads((out / "gpu_check.json").read_text())
    assert {name: step["status"] for name, step in report["steps"].items()} == dict.fromkeys(("cuda_tests", "step", "fused", "loop"), "ok")
    if not torch.cuda.is_available():
        assert report["steps"]["cuda_tests"]["summary"].startswith("24 skipped")
    assert [entry["setup"] for entry in report["steps"]["step"]["figures"]["summary"]] == ["baseline"]
    loop = report["steps"]["loop"]["figures"]
    assert [(row["setup"], row["cuda_graph"]) for row in loop["trials"]] == [("baseline", False), ("dual_coop", False)]
    for row in loop["trials"]:
        assert row["steps"] == 5 and row["step_ms"] > 0 and row["eval_s"] > 0 and row["coco_trial_min"] > 0
        assert row["resident"] == "test,train0"
    assert loop["fill_images_per_s"] > 0 and set(loop["packing"]) == {"1"}
    (row,) = report["fused"]["rows"]
    assert (row["mode"], row["members"], row["setups"]) == ("cached", 2, ["dual_coop", "positive_coop"])
    # The profile costs smoke.yaml's MLR trials, fused and not.
    assert report["cost"][0].startswith(f"Cost from {out / 'gpu_check.json'} (RN-tiny at 64 px, batch 8")
    assert report["cost"][1].lstrip().startswith("fused (") and report["cost"][2].lstrip().startswith("unfused (8 trials)")
    table = (out / "gpu_check.md").read_text()
    assert "| fused cached K=2 | " in table and "| packing 1 | " in table and "| feature fill | " in table
