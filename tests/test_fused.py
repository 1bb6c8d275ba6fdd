"""Trials fused in a group (`trainables.mlr.fused`): one read of the stream, each member's own step.
A member trained in a group computes exactly what it computes alone, and fails alone."""

from __future__ import annotations

import pytest
import torch

from trainables.config import DatasetConfig
from trainables.mlr.config import TrialConfig
from trainables.mlr.fused import FusedMLRTrials, run_group_epochs
from trainables.mlr.stream import stream_key
from trainables.mlr.train import MLRTrial, run_epochs

MEMBERS = [
    # (setup, label ratio, loss settings, learning rates): what members of one stream may differ in.
    ("baseline", 0.5, {"gamma_neg": 2.0}, {"projector": 0.0003}),
    ("positive_coop", 0.3, {"gamma_neg": 1.0}, {"prompt": 0.002, "embedding": 1.0}),
    ("negative_coop", 0.5, {"clip": 0.0}, {"prompt": 0.004, "embedding": 0.5}),
    ("dual_coop", 0.7, {"gamma_pos": 0.0}, {"prompt": 0.002}),
]


def _config(tmp_path, setup: str, ratio: float, loss: dict, lr: dict, mode: str, epochs: int = 2) -> TrialConfig:
    return TrialConfig(
        setup=setup,
        setup_options={"n_ctx": 4} if setup != "baseline" else {},
        dataset=DatasetConfig(name="shapes", kind="synthetic", synthetic_num_train=40, synthetic_num_test=24),
        backbone={"model": "RN-tiny", "image_size": 64},
        features={"mode": mode},
        training={"epochs": epochs, "batch_size": 16, "warmup_epochs": 0, "lr": lr, "num_workers": 0},
        loss=loss,
        label_ratio=ratio,
        seed=3,
        cache_dir=tmp_path / "cache",
        data_dir=tmp_path / "data",
        device="cpu",
    )


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("mode", ["cached", "online"])
def test_every_setup_trained_in_a_group_computes_what_it_computes_alone(tmp_path, mode):
    configs = [_config(tmp_path, *member, mode=mode) for member in MEMBERS]
    assert len({stream_key(c) for c in configs}) == 1
    group = list(run_group_epochs(FusedMLRTrials(configs), [None] * len(configs)))
    for i, config in enumerate(configs):
        alone = list(run_epochs(config))
        fused = [epoch[i] for epoch in group]
        assert [m["epoch"] for m, _ in fused] == [1, 2]
        for (fused_metrics, fused_state), (metrics, state) in zip(fused, alone):
            # Bit for bit: nothing a member computes is batched with another's.
            assert fused_metrics["mAP"] == metrics["mAP"] and fused_metrics["train_loss"] == metrics["train_loss"], config.setup
            assert _same_weights(fused_state["setup"], state["setup"]), config.setup
            assert fused_metrics["best_per_class_ap"] == metrics["best_per_class_ap"]


def test_a_diverging_member_fails_alone_and_the_others_go_on(tmp_path):
    configs = [_config(tmp_path, *MEMBERS[0], mode="cached", epochs=3), _config(tmp_path, *MEMBERS[3], mode="cached", epochs=3)]
    # A learning rate of 1e38 blows the Baseline's head up to NaN within its first epoch (3 steps).
    configs[0] = configs[0].model_copy(update={"training": configs[0].training.model_copy(update={"lr": {"projector": 1e38}})})
    group = list(run_group_epochs(FusedMLRTrials(configs), [None, None]))
    error = group[0][0]
    assert isinstance(error, FloatingPointError) and "training loss is" in str(error) and "at epoch 1" in str(error)
    assert [epoch[0] for epoch in group[1:]] == [None, None]  # not stepped again
    alone = list(run_epochs(configs[1]))
    assert [epoch[1][0]["mAP"] for epoch in group] == [m["mAP"] for m, _ in alone]


def test_a_member_resumed_from_a_later_checkpoint_joins_the_group_there(tmp_path):
    """A grown group: one member starts fresh, another continues from its epoch-1 checkpoint."""
    ahead, fresh = _config(tmp_path, *MEMBERS[1], mode="cached"), _config(tmp_path, *MEMBERS[2], mode="cached")
    straight = list(run_epochs(ahead))
    group = list(run_group_epochs(FusedMLRTrials([ahead, fresh]), [straight[0][1], None]))
    assert group[0][0] is None and group[0][1][0]["epoch"] == 1  # epoch 1: only the fresh member trains
    assert group[1][0][0]["mAP"] == straight[1][0]["mAP"]
    assert _same_weights(group[1][0][1]["setup"], straight[1][1]["setup"])


def test_trials_of_another_stream_are_refused(tmp_path):
    other_seed = _config(tmp_path, *MEMBERS[0], mode="cached").model_copy(update={"seed": 4})
    with pytest.raises(ValueError, match="one stream"):
        FusedMLRTrials([_config(tmp_path, *MEMBERS[0], mode="cached"), other_seed])


def test_members_share_the_streams_backbone_and_features(tmp_path):
    group = FusedMLRTrials([_config(tmp_path, *member, mode="cached") for member in MEMBERS[:2]])
    first, second = group.members
    assert first.clip is second.clip is group.stream.clip and first.test_features is second.test_features
    assert isinstance(first, MLRTrial) and first.train_targets is not second.train_targets  # each its own labels
