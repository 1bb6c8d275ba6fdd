"""What only a CUDA device can check: the whole step as one CUDA graph against the eager step,
resuming a graphed trial, and features streamed through pinned memory. Skipped without CUDA; run
them wherever a GPU is at hand (`python -m pytest -m cuda`)."""

from __future__ import annotations

import pytest
import torch

from trainables.config import DatasetConfig, TrialConfig
from trainables.ood.train import run_ood_epochs
from trainables.train import run_epochs

from tests.test_ood_lapt import _trial as lapt_trial

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
        label_ratio=0.5, seed=1, cache_dir=tmp_path / "cache", data_dir=tmp_path / "data", device="cuda", **changes,
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
