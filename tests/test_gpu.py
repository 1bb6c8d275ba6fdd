"""What only a CUDA device can check: the whole step as one CUDA graph against the eager step (the
full batch captured, a failed capture falling back, a trial on cuda:1), resuming a graphed trial,
features streamed through pinned memory, LAPT's scoring in batches, a trial given no GPU and the
local fill leaving the driver without CUDA. Skipped without CUDA; run them wherever a GPU is at
hand (`python -m pytest -m cuda`)."""

from __future__ import annotations

import pytest
import torch

from tests.test_ood_lapt import _trial as lapt_trial
from trainables.config import DatasetConfig
from trainables.mlr.config import TrialConfig
from trainables.mlr.train import run_epochs
from trainables.ood.train import run_ood_epochs

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

BF16 = {"rtol": 2e-2, "atol": 2e-2}
"""Graph and eager steps run the same kernels; bf16 leaves room for a different reduction order."""


def _config(tmp_path, setup: str, cuda_graph: bool, **changes) -> TrialConfig:
    return TrialConfig(
        setup=setup,
        # 36 training images in batches of 8: the last batch of each epoch (4) runs eagerly beside the graph.
        dataset=DatasetConfig(name="shapes", kind="synthetic", synthetic_num_train=36, synthetic_num_test=24),
        backbone={"model": "RN-tiny", "image_size": 64},
        training={"epochs": 3, "batch_size": 8, "warmup_epochs": 1, "lr": {"projector": 0.01, "prompt": 0.002, "embedding": 1.0},
                  "precision": "bf16", "cuda_graph": cuda_graph},
        label_ratio=0.5, seed=1, cache_dir=tmp_path / "cache", data_dir=tmp_path / "data", **{"device": "cuda", **changes},
    )  # fmt: skip


def _assert_same_weights(a: dict, b: dict, **tolerance) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], **tolerance)


@pytest.mark.parametrize("setup", ["baseline", "positive_coop", "negative_coop", "dual_coop"])
def test_a_graphed_trial_learns_what_the_eager_one_does(tmp_path, setup):
    graphed = list(run_epochs(_config(tmp_path, setup, True)))
    eager = list(run_epochs(_config(tmp_path, setup, False)))
    assert graphed[0][0]["resolved"]["training.cuda_graph"] is True and eager[0][0]["resolved"]["training.cuda_graph"] is False
    assert graphed[0][0]["resolved"]["device"].startswith("cuda")
    for (m1, s1), (m2, s2) in zip(graphed, eager):
        assert m1["train_loss"] == pytest.approx(m2["train_loss"], rel=2e-2)
        _assert_same_weights(s1["setup"], s2["setup"], **BF16)


def test_a_fused_group_is_one_graph_and_each_member_learns_what_it_learns_alone(tmp_path):
    from trainables.mlr.fused import FusedMLRTrials, run_group_epochs

    setups = ["baseline", "positive_coop", "negative_coop", "dual_coop"]
    group = FusedMLRTrials([_config(tmp_path, setup, True) for setup in setups])
    fused = list(run_group_epochs(group, [None] * len(setups)))
    step = group.stream.group_step(group.members)
    assert step._graph is not None and step._static_inputs[0].shape[0] == 8  # one graph, every member's step in it
    assert all(member.step._graph is None for member in group.members)
    for i, setup in enumerate(setups):
        alone = list(run_epochs(_config(tmp_path, setup, True)))
        for epoch, (metrics, state) in enumerate(alone):
            member_metrics, member_state = fused[epoch][i]
            assert member_metrics["train_loss"] == pytest.approx(metrics["train_loss"], rel=1e-3)
            assert member_metrics["mAP"] == pytest.approx(metrics["mAP"], abs=1e-3)
            _assert_same_weights(member_state["setup"], state["setup"], **BF16)


def test_resuming_a_graphed_trial_gives_the_uninterrupted_weights(tmp_path):
    config = _config(tmp_path, "dual_coop", True)
    straight = list(run_epochs(config))
    first = iter(run_epochs(config))
    next(first)
    _, after_two = next(first)
    resumed = list(run_epochs(config, after_two))
    _assert_same_weights(straight[-1][1]["setup"], resumed[-1][1]["setup"])
    assert resumed[-1][0]["mAP"] == pytest.approx(straight[-1][0]["mAP"])


def test_streamed_features_through_pinned_memory_match_resident_ones(tmp_path):
    config = _config(tmp_path, "positive_coop", True)
    streamed = config.model_copy(update={"features": config.features.model_copy(update={"device_memory": 0.0})})
    resident_run, streamed_run = list(run_epochs(config)), list(run_epochs(streamed))
    assert streamed_run[0][0]["resolved"]["features.resident"] == "none"
    for (m1, s1), (m2, s2) in zip(resident_run, streamed_run):
        assert m1["mAP"] == pytest.approx(m2["mAP"])
        _assert_same_weights(s1["setup"], s2["setup"])


def test_a_graphed_lapt_trial_learns_what_the_eager_one_does(tmp_path):
    def trial(cuda_graph: bool):
        config = lapt_trial(tmp_path, "lapt", device="cuda")
        return config.model_copy(update={"training": config.training.model_copy(update={"cuda_graph": cuda_graph, "epochs": 3})})

    graphed, eager = list(run_ood_epochs(trial(True))), list(run_ood_epochs(trial(False)))
    for (m1, s1), (m2, s2) in zip(graphed, eager):
        assert m1["train_loss"] == pytest.approx(m2["train_loss"], rel=1e-4)
        _assert_same_weights(s1["prompts"], s2["prompts"], rtol=1e-4, atol=1e-5)


def test_a_diverging_graphed_trial_names_its_first_bad_step(tmp_path):
    config = _config(tmp_path, "baseline", True)
    config = config.model_copy(update={"training": config.training.model_copy(update={"lr": {"projector": 1e38}, "warmup_epochs": 0})})
    with pytest.raises(FloatingPointError, match=r"training loss is (nan|inf) at epoch 1, step \d+: "):
        list(run_epochs(config))


# -- what issue 27's review found: the capture, the device, the draws, memory, the CPU trial ------------


def _mlr_trial(tmp_path, setup: str, cuda_graph, **changes):
    from trainables.mlr.train import MLRTrial

    return MLRTrial(_config(tmp_path, setup, cuda_graph, **changes))


def _train(trial, epochs: int = 2) -> None:
    for epoch in range(epochs):
        trial.set_learning_rates(epoch)
        trial.train_epoch(epoch)


@pytest.mark.parametrize("setup", ["baseline", "positive_coop", "negative_coop", "dual_coop"])
def test_the_graph_is_captured_on_a_full_batch_and_replayed_for_every_full_batch(tmp_path, setup):
    trial = _mlr_trial(tmp_path, setup, True)  # 36 images in batches of 8: 4 full ones and one of 4 an epoch
    _train(trial)
    assert trial.step._graph is not None and trial.step._static_inputs[0].shape[0] == 8


def test_a_graphed_lapt_trial_captures_its_full_batch(tmp_path):
    from trainables.ood.train import OODTrial

    config = lapt_trial(tmp_path, "lapt", device="cuda")
    trial = OODTrial(config.model_copy(update={"training": config.training.model_copy(update={"epochs": 3, "cuda_graph": True})}))
    assert len(trial.labels) % 8 != 0  # a short last batch each epoch
    for epoch in range(3):
        trial.train_epoch(epoch)
    assert trial.step._graph is not None and trial.step._static_inputs[0].shape[0] == 8


def _reading_back(monkeypatch):
    """Every setup's loss reads a value back to the host, which no CUDA graph can capture."""
    from trainables.mlr.train import MLRTrial

    original = MLRTrial.loss_of

    def loss_of(self, feats, targets):
        loss = original(self, feats, targets)
        return loss * 1.0 if loss.item() < 1e30 else loss

    monkeypatch.setattr(MLRTrial, "loss_of", loss_of)


def test_a_capture_that_fails_under_auto_warns_and_trains_eagerly(tmp_path, monkeypatch):
    _reading_back(monkeypatch)
    auto = list(run_epochs(_config(tmp_path, "dual_coop", "auto")))
    eager = list(run_epochs(_config(tmp_path, "dual_coop", False)))
    assert "training.cuda_graph" in auto[-1][0]["warnings"] and eager[-1][0]["warnings"] == {}
    for (m1, s1), (m2, s2) in zip(auto, eager):
        assert m1["train_loss"] == pytest.approx(m2["train_loss"], rel=2e-2)
        _assert_same_weights(s1["setup"], s2["setup"], **BF16)


def test_a_capture_that_fails_under_true_is_one_line(tmp_path, monkeypatch):
    from trainables.errors import UserInputError

    _reading_back(monkeypatch)
    with pytest.raises(UserInputError, match="^training.cuda_graph is true, but this trial's step cannot be captured"):
        list(run_epochs(_config(tmp_path, "dual_coop", True)))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_a_trial_on_cuda_1_captures_and_computes_there(tmp_path):
    torch.cuda.set_device(0)
    before = torch.cuda.memory_allocated(0)
    graphed = list(run_epochs(_config(tmp_path, "positive_coop", True, device="cuda:1")))
    eager = list(run_epochs(_config(tmp_path, "positive_coop", False, device="cuda:1")))
    assert graphed[0][0]["resolved"]["device"].startswith("cuda:1")
    assert all(v.device == torch.device("cpu") for v in graphed[-1][1]["setup"].values())  # checkpoints on the host
    for (_, s1), (_, s2) in zip(graphed, eager):
        _assert_same_weights(s1["setup"], s2["setup"], **BF16)
    assert torch.cuda.memory_allocated(0) == before  # nothing of the trial's on cuda:0


@pytest.mark.parametrize("setup", ["baseline", "positive_coop", "dual_coop"])
def test_a_seed_starts_from_the_same_weights_on_the_gpu_and_the_cpu(tiny_rn, setup):
    from trainables.mlr import setups

    torch.manual_seed(5)
    on_cpu = setups.build(setup, ["cat", "dog"], tiny_rn).state_dict()
    torch.manual_seed(5)
    on_gpu = setups.build(setup, ["cat", "dog"], tiny_rn.to("cuda")).state_dict()
    tiny_rn.to("cpu")
    for name, value in on_cpu.items():
        assert torch.equal(on_gpu[name].cpu(), value), name


def test_lapt_scores_imagenet_scale_in_batches_within_a_batchs_memory():
    import torch.nn.functional as F

    from trainables.ood.score import grouped_score, ood_scores

    generator = torch.Generator(device="cuda").manual_seed(0)
    images = F.normalize(torch.randn(50_000, 512, device="cuda", generator=generator), dim=-1)
    text = F.normalize(torch.randn(11_000, 512, device="cuda", generator=generator), dim=-1)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    scores = ood_scores(images, text, 1_000, rule="grouped", groups=100, batch_size=256)
    peak = torch.cuda.max_memory_allocated() - base
    assert scores.shape == (50_000,) and peak < 2**30  # one call: 20.5 GiB, twice
    head = images[:512] @ text.T
    torch.testing.assert_close(scores[:512], grouped_score(head[:, :1_000], head[:, 1_000:], 100), rtol=0, atol=1e-5)


_CPU_TRIAL = """
import json, sys
import torch
from trainables import trainable

trainable.ray.get_gpu_ids = lambda: []          # Ray gave this trial no GPU (gpus_per_trial: 0)
trainable.tune.get_checkpoint = lambda: None
reported = []
trainable.tune.report = lambda metrics, checkpoint=None: reported.append(metrics)
trainable.ray.get_runtime_context = lambda: type("C", (), {"get_node_id": lambda self: "node"})()
trainable.run_trial({"family": "mlr", "trial_config": json.loads(sys.argv[1])})
print(json.dumps({"device": reported[-1]["resolved"]["device"], "cuda_initialized": torch.cuda.is_initialized()}))
"""


def test_a_trial_given_no_gpu_runs_on_the_cpu_and_never_opens_cuda(tmp_path):
    import json
    import subprocess
    import sys

    config = _config(tmp_path, "baseline", "auto", device="auto")
    config = config.model_copy(update={"training": config.training.model_copy(update={"epochs": 1, "precision": "fp32"})})
    done = subprocess.run([sys.executable, "-c", _CPU_TRIAL, config.model_dump_json()], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"device": "cpu", "cuda_initialized": False}


def test_a_local_fill_for_gpu_trials_leaves_the_driver_without_a_cuda_context(make_spec):
    from orchestrator.run import fill
    from orchestrator.specs import grid

    spec = make_spec(resources={"cpus_per_trial": 1, "gpus_per_trial": 0.5}, features={"mode": "cached"})
    assert fill.local_trial_device(spec).type == "cuda"
    initialized = torch.cuda.is_initialized()
    fill.fill_locally(grid.Plan.of(spec))
    assert len(list((spec.cache_dir / "features").glob("*.npy"))) == 2
    assert torch.cuda.is_initialized() == initialized  # the encoding ran in a process of its own


def test_online_batches_are_the_same_on_the_gpu_whatever_the_workers(tmp_path):
    from trainables.mlr.train import MLRTrial

    def batches(workers: int):
        config = _config(tmp_path, "baseline", True, features={"mode": "online"})
        config = config.model_copy(update={"training": config.training.model_copy(update={"num_workers": workers})})
        return [feats.clone() for feats, _ in MLRTrial(config).train_batches(0)]

    for alone, pooled in zip(batches(0), batches(2)):
        assert torch.equal(alone, pooled)
