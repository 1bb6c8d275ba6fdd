"""The per-trial loop: the reference's learning-rate schedule, learning, and exact resumption."""

import math

import numpy as np
import pytest
import torch

from trainables import data
from trainables.config import DatasetConfig, FeatureConfig
from trainables.mlr.config import TrainingConfig, TrialConfig
from trainables.mlr.train import learning_rate, run_epochs


def test_schedule_is_the_references_warmup_then_cosine():
    # REFERENCE.md section 1: "epoch 0 at 1e-5; epoch e>=1 at 0.5*lr*(1+cos(pi*(e-1)/50))".
    training = TrainingConfig(epochs=50, warmup_epochs=1, warmup_lr=1e-5)
    assert learning_rate(0.002, 0, training) == 1e-5
    for epoch in (1, 2, 25, 49):
        expected = 0.5 * 0.002 * (1 + math.cos(math.pi * (epoch - 1) / 50))
        assert learning_rate(0.002, epoch, training) == pytest.approx(expected, rel=1e-12)
    assert learning_rate(0.002, 1, training) == pytest.approx(0.002)


def test_constant_schedule_and_no_warmup():
    training = TrainingConfig(epochs=5, warmup_epochs=0, scheduler="constant")
    assert [learning_rate(0.5, e, training) for e in range(5)] == [0.5] * 5


def _config(tmp_path, setup="baseline", epochs=3, **overrides) -> TrialConfig:
    return TrialConfig(
        setup=setup,
        dataset=DatasetConfig(name="shapes", kind="synthetic", synthetic_num_train=96, synthetic_num_test=64),
        backbone={"model": "RN-tiny", "image_size": 128},
        training={"epochs": epochs, "batch_size": 32, "warmup_epochs": 0, "lr": {"projector": 0.0003, "prompt": 0.002, "embedding": 1.0}},
        label_ratio=0.5,
        seed=1,
        cache_dir=tmp_path / "cache",
        data_dir=tmp_path / "data",
        device="cpu",
        **overrides,
    )


def test_epochs_report_metrics_and_the_baseline_learns(tmp_path):
    history = [metrics for metrics, _ in run_epochs(_config(tmp_path, epochs=4))]
    assert [m["epoch"] for m in history] == [1, 2, 3, 4]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert 0 <= history[-1]["mAP"] <= 100
    assert history[-1]["best_mAP"] == max(m["mAP"] for m in history)
    assert history[-1]["trainable_params"] == 64 * 2 * len(history[-1]["classnames"]) + 2 * len(history[-1]["classnames"])
    assert 0.4 < history[-1]["kept_fraction"] < 0.6
    # The backbone's section 5.2 cosines, on the trial's class names: a property of the frozen
    # encoder, the same at every epoch.
    for key in ("absence_cosine.not_a_photo", "absence_cosine.photo_without"):
        assert -1 <= history[0][key] <= 1 and {m[key] for m in history} == {history[0][key]}


def test_resuming_from_a_state_continues_exactly(tmp_path):
    config = _config(tmp_path, setup="positive_coop", epochs=3)
    straight = [(m, s) for m, s in run_epochs(config)]
    first_two = iter(run_epochs(config))
    next(first_two)
    _, state_after_two = next(first_two)
    resumed = list(run_epochs(config, state_after_two))
    assert [m["epoch"] for m, _ in resumed] == [3]
    final_straight, final_resumed = straight[-1][1]["setup"], resumed[-1][1]["setup"]
    for name in final_straight:
        torch.testing.assert_close(final_resumed[name], final_straight[name])
    assert resumed[-1][0]["mAP"] == pytest.approx(straight[-1][0]["mAP"])


def test_baseline_beats_chance_on_generated_shapes(tmp_path):
    config = _config(tmp_path, epochs=8).model_copy(
        update={"dataset": DatasetConfig(name="shapes", kind="synthetic", synthetic_num_train=256, synthetic_num_test=128)}
    )
    history = [metrics for metrics, _ in run_epochs(config)]
    test_labels = data.build_dataset(config.dataset, "test", config.data_dir).labels
    # A scorer that ignores the image gets each class's prevalence as its expected AP.
    chance = 100 * float(np.mean((test_labels == 1).mean(axis=0)))
    assert history[-1]["best_mAP"] > chance + 10, (history[-1]["best_mAP"], chance)


def test_bf16_precision_trains_a_prompt_setup(tmp_path):
    config = _config(tmp_path, setup="dual_coop", epochs=1)
    config = config.model_copy(update={"training": config.training.model_copy(update={"precision": "bf16"})})
    (metrics, state), = list(run_epochs(config))
    assert math.isfinite(metrics["train_loss"]) and 0 <= metrics["mAP"] <= 100
    assert all(v.dtype == torch.float32 for v in state["setup"].values() if v.is_floating_point())  # weights stay fp32


@pytest.mark.parametrize("features", [{"mode": "online"}, {"mode": "cached_views", "views": 2}])
def test_augmented_feature_modes_train(tmp_path, features):
    config = _config(tmp_path, epochs=2).model_copy(update={"features": FeatureConfig(**features)})
    history = [metrics for metrics, _ in run_epochs(config)]
    assert [m["epoch"] for m in history] == [1, 2]
    assert all(math.isfinite(m["train_loss"]) for m in history)
    stored = list((tmp_path / "cache" / "features").glob("*.npy"))
    # online: only the test split is cached; cached_views: the test split and one file per view.
    assert len(stored) == (1 if features["mode"] == "online" else 3)


# -- the online feature mode -----------------------------------------------------------------------


def _online(tmp_path, workers: int | None, **changes) -> TrialConfig:
    config = _config(tmp_path, **changes).model_copy(update={"features": FeatureConfig(mode="online")})
    return config.model_copy(update={"training": config.training.model_copy(update={"num_workers": workers})})


def _epoch_batches(config: TrialConfig, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from trainables.mlr.train import MLRTrial

    trial = MLRTrial(config)
    return [(feats.clone(), targets.clone()) for feats, targets in trial.train_batches(epoch)]


def test_online_batches_do_not_depend_on_the_decoding_workers(tmp_path):
    """Image i of epoch e is augmented under the seed (trial seed, e, i), whichever worker decodes it."""
    for epoch in (0, 1):
        alone, workers = _epoch_batches(_online(tmp_path, 0), epoch), _epoch_batches(_online(tmp_path, 2), epoch)
        assert len(alone) == len(workers) == 3
        for (f0, t0), (f2, t2) in zip(alone, workers):
            assert torch.equal(f0, f2) and torch.equal(t0, t2)
    first, second = _epoch_batches(_online(tmp_path, 0), 0), _epoch_batches(_online(tmp_path, 0), 1)
    assert not torch.equal(first[0][0], second[0][0])  # another epoch: another order and other draws


def test_a_resumed_online_trial_sees_the_augmentations_it_would_have_seen(tmp_path):
    config = _online(tmp_path, 2, setup="positive_coop", epochs=2)
    straight = list(run_epochs(config))
    (_, after_one), = [next(iter(run_epochs(config)))]
    resumed = list(run_epochs(config, after_one))
    for name, value in straight[-1][1]["setup"].items():
        assert torch.equal(resumed[-1][1]["setup"][name], value)
    assert resumed[-1][0]["mAP"] == straight[-1][0]["mAP"]


def test_uint8_pixels_normalised_on_the_device_are_the_transforms_own(tmp_path):
    """`normalise` computes what ToTensor and CLIP's Normalize compute, bit for bit on a CPU."""
    dataset = data.build_dataset(DatasetConfig(name="shapes", kind="synthetic", synthetic_num_train=8), "train", tmp_path)
    image = dataset.load_image(0)
    torch.manual_seed(3)
    expected = data.train_transform(64)(image)
    torch.manual_seed(3)
    pixels = data.train_transform(64, normalised=False)(image)
    assert pixels.dtype == torch.uint8
    assert torch.equal(data.normalise(pixels.unsqueeze(0))[0], expected)
