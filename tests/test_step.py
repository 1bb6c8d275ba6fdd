"""A trial's training step: SGD's update with device learning rates, no host sync, the deferred
non-finite check, and the feature loader (resident and streamed) against the batches written out here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from tests.test_ood_lapt import _trial as lapt_trial
from trainables.config import DatasetConfig
from trainables.errors import UserInputError
from trainables.features import rows as feature_rows
from trainables.mlr.config import TrialConfig
from trainables.mlr.train import MLRTrial, run_epochs
from trainables.ood.train import OODTrial
from trainables.step import TrainingStep, sgd_update, use_cuda_graph

SYNCS = ("item", "__bool__", "tolist", "cpu", "numpy", "__float__", "__int__", "__index__")
"""Tensor methods that copy a value to the host, so wait for the device: what a CUDA graph cannot capture."""

DATA_DEPENDENT = ("nonzero", "masked_select", "unique", "unique_consecutive", "repeat_interleave", "bincount")
"""Operations whose output shape depends on the values, which the device must report first."""


class FailOnHostSync(TorchFunctionMode):
    """A CPU stand-in for what breaks CUDA graph capture: any read of a tensor's value on the host
    fails, and so does an operation whose output shape the values decide (a boolean mask among them)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", None)
        if name in SYNCS or name in DATA_DEPENDENT:
            raise AssertionError(f"a training step synchronised with the host: {name}")
        if name in ("__getitem__", "__setitem__") and _has_bool_tensor(args[1]):
            raise AssertionError(f"a training step indexed with a boolean mask: {name}")
        return func(*args, **(kwargs or {}))


def _has_bool_tensor(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(part, torch.Tensor) and part.dtype == torch.bool for part in parts)


@pytest.mark.parametrize(
    "breaks_capture",
    [lambda x: x.sum().item(), lambda x: bool(x.sum() > 0), lambda x: x[x > 0].sum(), lambda x: torch.nonzero(x).sum()],
)
def test_the_stand_in_catches_what_breaks_a_capture(breaks_capture):
    with FailOnHostSync(), pytest.raises(AssertionError, match="a training step"):
        breaks_capture(torch.arange(-2.0, 3.0))


@pytest.mark.parametrize(
    "settings",
    [
        {"momentum": 0.0},
        {"momentum": 0.9},
        {"momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-4},
        {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-5},
        {"momentum": 0.5, "maximize": True},
    ],
)
def test_the_update_with_device_learning_rates_is_torch_sgd_bit_for_bit(settings):
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(5, 3, generator=generator), torch.randn(7, generator=generator)]
    ours = [torch.nn.Parameter(p.clone()) for p in params]
    theirs = [torch.nn.Parameter(p.clone()) for p in params]
    mine = torch.optim.SGD([{"params": ours[:1], "lr": 0.3}, {"params": ours[1:], "lr": 0.01}], lr=0.0, **settings)
    reference = torch.optim.SGD([{"params": theirs[:1], "lr": 0.3}, {"params": theirs[1:], "lr": 0.01}], lr=0.0, **settings)
    rates = [torch.tensor(0.3), torch.tensor(0.01)]
    for step in range(4):
        grads = [torch.randn(p.shape, generator=generator) for p in params]
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        sgd_update(mine, rates)
        reference.step()
        for p, q in zip(ours, theirs):
            assert torch.equal(p, q), (settings, step)
    # The momentum buffers are where SGD keeps them: its state_dict loads into SGD as its own.
    for p, q in zip(ours, theirs):
        if settings["momentum"]:
            assert torch.equal(mine.state[p]["momentum_buffer"], reference.state[q]["momentum_buffer"])


def _mlr_config(tmp_path, setup: str = "positive_coop", **training) -> TrialConfig:
    return TrialConfig(
        setup=setup,
        dataset=DatasetConfig(name="shapes", kind="synthetic", synthetic_num_train=40, synthetic_num_test=24),
        backbone={"model": "RN-tiny", "image_size": 64},
        training={"epochs": 2, "batch_size": 8, "warmup_epochs": 0, "lr": {"projector": 0.01, "prompt": 0.002, "embedding": 1.0}, **training},
        label_ratio=0.5,
        seed=1,
        cache_dir=tmp_path / "cache",
        data_dir=tmp_path / "data",
        device="cpu",
    )


@pytest.mark.parametrize("setup", ["baseline", "positive_coop", "negative_coop", "dual_coop"])
def test_an_mlr_training_step_never_reads_the_device(tmp_path, setup):
    trial = MLRTrial(_mlr_config(tmp_path, setup, precision="fp32"))
    trial.set_learning_rates(0)
    batches = trial.train_batches(0)
    feats, targets = next(batches)
    before = [p.detach().clone() for p in trial.setup.parameters()]
    with FailOnHostSync():
        trial.step(feats, targets)
        trial.step(*next(batches))
    assert any(not torch.equal(b, p) for b, p in zip(before, trial.setup.parameters()))  # it did step
    assert math.isfinite(trial.step.end_epoch(0))


def test_a_lapt_training_step_never_reads_the_device(tmp_path):
    trial = OODTrial(lapt_trial(tmp_path, "lapt"))
    draws = trial._draws(0)
    order = draws["order"][: len(draws["rows"][0])]
    inputs = (
        trial.examples.index_select(0, order), trial.device_labels.index_select(0, order),
        draws["templates"][: len(order)], draws["partners"][: len(order)],
        draws["cross_modal_lam"][0], draws["cross_distribution_lam"][0], draws["paired"][0],
    )  # fmt: skip
    trial._set_learning_rate(0, 10)
    with FailOnHostSync():
        trial.step(*inputs)
    assert math.isfinite(trial.step.end_epoch(0))


def test_a_non_finite_loss_fails_the_epoch_naming_its_first_step():
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    factors, computed = iter([1.0, 2.0, math.nan, 3.0, math.inf, 1.0, 3.0]), []

    def loss_of(scale: torch.Tensor) -> torch.Tensor:
        computed.append((weight * scale).sum() * next(factors))
        return computed[-1]

    step = TrainingStep(loss_of, optimizer, torch.device("cpu"))
    for _ in range(5):
        step(torch.ones(()))  # the bad steps go on: nothing is read until the epoch ends
    with pytest.raises(FloatingPointError, match=r"training loss is nan at epoch 4, step 3: the learning rate or loss settings diverge"):
        step.end_epoch(3)
    # The record starts afresh with the next epoch: its mean loss is that of its own two steps.
    weight.data = torch.ones(2)
    step(torch.ones(()))
    step(torch.ones(()))
    assert step.end_epoch(4) == pytest.approx((computed[-2].item() + computed[-1].item()) / 2)


def test_a_diverging_trial_stops_at_the_epoch_of_its_first_bad_step(tmp_path):
    config = _mlr_config(tmp_path, "baseline", lr={"projector": 1e38}, epochs=3)
    history = []
    with pytest.raises(FloatingPointError, match=r"training loss is (nan|inf) at epoch 1, step [2-5]: "):
        for metrics, _ in run_epochs(config):
            history.append(metrics)
    assert history == []  # nothing after the bad step was reported (or checkpointed)


def test_cuda_graphs_are_for_cuda_devices():
    cpu = torch.device("cpu")
    assert use_cuda_graph("auto", cpu) is False and use_cuda_graph(False, cpu) is False
    with pytest.raises(UserInputError, match="^training.cuda_graph is true, but this trial runs on cpu: CUDA graphs need a CUDA device$"):
        use_cuda_graph(True, cpu)


def test_a_trial_asking_for_cuda_graphs_on_a_cpu_fails_in_one_line(tmp_path):
    with pytest.raises(UserInputError, match="CUDA graphs need a CUDA device"):
        next(run_epochs(_mlr_config(tmp_path, "baseline", cuda_graph=True)))


# -- the loader ------------------------------------------------------------------------------------


def _old_batches(features: np.ndarray, valid: np.ndarray, batch_size: int, seed: int, epoch: int):
    """The loop's batches before features could stay on the device, written out: a permutation of
    the valid rows seeded by (seed, epoch), each batch's rows sorted, gathered from the memory map
    and converted to float32 on the host."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    rows = np.flatnonzero(valid)
    order = rows[torch.randperm(len(rows), generator=generator).numpy()]
    for start in range(0, len(order), batch_size):
        index = np.sort(order[start : start + batch_size])
        yield index, torch.from_numpy(np.asarray(features[index], dtype=np.float32))


@pytest.mark.parametrize("resident", [True, False])
def test_the_loader_yields_the_old_batches_in_the_old_order(tmp_path, resident):
    features = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float16, shape=(37, 5, 4))
    features[:] = np.random.default_rng(0).standard_normal(features.shape)
    features.flush()
    features = np.load(tmp_path / "f.npy", mmap_mode="r")
    valid = np.ones(37, dtype=bool)
    valid[[3, 20]] = False  # unreadable images are never batched
    rows = feature_rows.FeatureRows(features, torch.device("cpu"), resident)
    assert rows.resident is resident
    generator = torch.Generator().manual_seed(5 * 100_003 + 2)
    ours = list(rows.batches(feature_rows.batch_rows(np.flatnonzero(valid), 8, generator)))
    theirs = list(_old_batches(features, valid, 8, seed=5, epoch=2))
    assert len(ours) == len(theirs) == 5
    for (index, batch), (old_index, old_batch) in zip(ours, theirs):
        assert index.tolist() == old_index.tolist()
        assert batch.dtype == torch.float32 and torch.equal(batch, old_batch)


def test_the_budget_decides_what_stays_on_the_device():
    small, large = np.zeros((4, 2, 2), np.float16), np.zeros((100, 2, 2), np.float16)
    placed = feature_rows.place([small, large], torch.device("cpu"), budget=small.nbytes + 10)
    assert [p.resident for p in placed] == [True, False]
    assert feature_rows.memory_budget(torch.device("cpu"), 1.5) == int(1.5 * 2**30)
    assert 0 < feature_rows.memory_budget(torch.device("cpu"), None) < feature_rows.available_host_memory()


def test_an_error_while_streaming_reaches_the_loop():
    features = np.zeros((10, 2, 2), np.float16)
    rows = feature_rows.FeatureRows(features, torch.device("cpu"), resident=False)
    with pytest.raises(IndexError):
        list(rows.batches([np.array([0, 1]), np.array([50])]))


@pytest.mark.parametrize("setup", ["baseline", "dual_coop"])
def test_a_trial_is_the_same_from_resident_and_streamed_features(tmp_path, setup):
    config = _mlr_config(tmp_path, setup, epochs=2)
    streamed = config.model_copy(update={"features": config.features.model_copy(update={"device_memory": 0.0})})
    resident_run, streamed_run = list(run_epochs(config)), list(run_epochs(streamed))
    assert resident_run[0][0]["resolved"]["features.resident"] == "test,train0"
    assert streamed_run[0][0]["resolved"]["features.resident"] == "none"
    for (m1, s1), (m2, s2) in zip(resident_run, streamed_run):
        assert (m1["train_loss"], m1["mAP"]) == (m2["train_loss"], m2["mAP"])
        for name, value in s1["setup"].items():
            assert torch.equal(value, s2["setup"][name])
