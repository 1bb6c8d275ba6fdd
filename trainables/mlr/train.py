"""The MLR family's trial, plain Python: no Ray, no MLflow.

`MLRTrial` is one trial's lifecycle (`trainables.lifecycle`); `run_epochs(config, state)` trains one setup on one (dataset, label ratio, seed) and yields, after
every epoch, the epoch's metrics and a resumable state. Starting it again from a yielded state
continues with the next epoch exactly as if it had never stopped: the shuffling of each epoch is
seeded by (seed, epoch), and the learning rate is a function of the epoch alone.

On a GPU the loop keeps the device busy: cached features stay on it when they fit
(`trainables.features.rows`), a step never waits for the device and is one CUDA graph
(`trainables.step`), and the test split is scored and ranked there, read back once per epoch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence

import torch

from trainables import data, lifecycle
from trainables.backbone.precision import autocast
from trainables.errors import UserInputError
from trainables.features import rows as feature_rows
from trainables.mlr import setups
from trainables.mlr.config import TrainingConfig, TrialConfig
from trainables.mlr.losses import AsymmetricLoss
from trainables.mlr.metrics import map_summary
from trainables.mlr.stream import MLRStream
from trainables.step import TrainingStep, snapshot


def learning_rate(base_lr: float, epoch: int, training: TrainingConfig) -> float:
    """Learning rate of one parameter group during `epoch` (0-based), set once per epoch.

    Dassl's ConstantWarmupScheduler around CosineAnnealingLR(T_max=epochs), as the DualCoOp and
    PositiveCoOp references step it: `warmup_lr` for the first `warmup_epochs`, then
    0.5 * lr * (1 + cos(pi * (epoch - warmup_epochs) / epochs)).
    """
    if epoch < training.warmup_epochs:
        return training.warmup_lr
    if training.scheduler == "constant":
        return base_lr
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * (epoch - training.warmup_epochs) / training.epochs))


class MLRTrial:
    """One MLR trial (`trainables.lifecycle.Trial`): set up once, in the named steps below, then
    driven epoch by epoch by `trainables.lifecycle.run_epochs`."""

    metric = "mAP"

    def __init__(self, config: TrialConfig, stream: MLRStream | None = None):
        """`stream`: the shared part, when the trial is one of a group reading it (else its own)."""
        self.config = config
        self.epochs = config.training.epochs
        self.stream = stream or MLRStream(config)
        self.device = self.stream.device
        self._set_up_shared()
        self._set_up_labels()
        self._set_up_setup()
        self._set_up_optimiser()

    # -- set up -----------------------------------------------------------------------------

    def _set_up_shared(self) -> None:
        """What the stream holds, under the names the steps below use."""
        stream = self.stream
        self.clip, self.precision, self.graphed = stream.clip, stream.precision, stream.graphed
        self.train_set, self.absence_cosines = stream.train_set, stream.absence_cosines
        self.test_features, self.test_rows, self.test_targets = stream.test_features, stream.test_rows, stream.test_targets
        self.resolved = dict(stream.resolved)

    def _set_up_labels(self) -> None:
        """The labels this trial knows: its label ratio's partial labels of the training set."""
        partial = data.dataset_partial_labels(self.train_set, self.config.label_ratio, self.config.seed)
        self.kept_fraction = data.kept_fraction(partial, self.train_set.labels)
        self.train_targets = torch.from_numpy(partial).to(self.device)

    def _set_up_setup(self) -> None:
        config = self.config
        torch.manual_seed(config.seed)  # the setup's initialisation depends on the seed alone
        self.setup = setups.build(config.setup, self.train_set.classnames, self.clip, **config.setup_options).to(self.device)
        self.trainable_params = setups.count_trainable(self.setup)

    def _set_up_optimiser(self) -> None:
        config = self.config
        groups = self.setup.parameter_groups()
        missing = sorted(set(groups) - set(config.training.lr))
        if missing:
            raise UserInputError(
                f"training.lr has no learning rate for parameter group(s) {missing} of setup '{config.setup}'"
            )
        opt = config.training.optimizer
        self.optimizer = torch.optim.SGD(
            [{"params": params, "lr": config.training.lr[name], "name": name} for name, params in groups.items()],
            lr=0.0,
            momentum=opt.momentum,
            weight_decay=opt.weight_decay,
            nesterov=opt.nesterov,
        )
        self.loss = AsymmetricLoss.from_config(config.loss)
        self.step = TrainingStep(
            self.loss_of, self.optimizer, self.device, self.graphed,
            graph_required=config.training.cuda_graph is True, full_rows=min(config.training.batch_size, len(self.train_set)),
        )  # fmt: skip

    # -- features ---------------------------------------------------------------------------

    def train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (dense features [B,L,d] float32, targets [B,K]) for one epoch, shuffled by (seed, epoch)."""
        for feats, rows in self.stream.batches(epoch):
            yield feats, self.train_targets.index_select(0, rows)

    # -- one epoch --------------------------------------------------------------------------

    def set_learning_rates(self, epoch: int) -> dict[str, float]:
        training = self.config.training
        rates = {g["name"]: learning_rate(training.lr[g["name"]], epoch, training) for g in self.optimizer.param_groups}
        self.step.set_learning_rates(list(rates.values()))
        return {f"lr_{name}": rate for name, rate in rates.items()}

    def loss_of(self, feats: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of one batch (`loss.weight` applied); what `TrainingStep` runs and captures."""
        with autocast(self.precision, self.device):
            logits = self.setup(feats)
        return self.loss(logits.float(), targets) * self.config.loss.weight

    def train_epoch(self, epoch: int) -> dict[str, float]:
        (trained,) = train_together(self.stream, [self], epoch)
        if isinstance(trained, FloatingPointError):
            raise trained
        return trained

    @torch.no_grad()
    def evaluate(self) -> dict:
        """mAP of the test split, scored on the device in `eval_batch_size` batches and ranked there."""
        self.setup.eval()
        with autocast(self.precision, self.device):
            class_embeddings = self.setup.class_embeddings()
        scores = []
        for _, feats in self.test_features.batches(feature_rows.batch_rows(self.test_rows, self.config.training.eval_batch_size)):
            with autocast(self.precision, self.device):
                logits = self.setup.logits_from_features(feats, class_embeddings).float()
            scores.append(self.presence_score(logits))
        return map_summary(torch.cat(scores), self.test_targets)

    def presence_score(self, logits: torch.Tensor) -> torch.Tensor:
        """The probability of presence, as the loss sees it: the 2-way softmax or the sigmoid ASL."""
        if self.config.loss.activation == "sigmoid":
            return torch.sigmoid(logits[..., 0])
        return torch.softmax(logits, dim=-1)[..., 0]

    def steps(self) -> Iterator[int]:
        """Training steps without end, epoch after epoch, each yielding the images it trained (what
        `tune-packing` and the benchmarks time)."""
        for epoch in itertools.count():
            self.set_learning_rates(epoch)
            self.setup.train()
            for feats, targets in self.train_batches(epoch):
                self.step(feats, targets)
                yield len(feats)
            self.step.end_epoch(epoch)

    # -- the lifecycle's checkpoint and report ----------------------------------------------

    def load(self, state: dict) -> None:
        self.setup.load_state_dict(state["setup"])
        self.optimizer.load_state_dict(state["optimizer"])

    def learned(self) -> dict:
        return {"setup": snapshot(self.setup.state_dict()), "optimizer": snapshot(self.optimizer.state_dict())}

    def best_of(self, evaluated: dict) -> dict:
        return {"best_per_class_ap": evaluated["per_class_ap"].tolist()}

    def report(self, evaluated: dict, state: dict) -> dict:
        return {
            "mAP": evaluated["mAP"],
            "best_per_class_ap": state.get("best_per_class_ap"),
            "classes_without_positives": evaluated["classes_without_positives"],
            "classnames": self.train_set.classnames,
            "trainable_params": self.trainable_params,
            "gpu_seconds": state["train_seconds"] if self.device.type == "cuda" else 0.0,
            "kept_fraction": self.kept_fraction,
            "resolved": self.resolved,
            "warnings": self.step.warnings(),
            **self.absence_cosines,
        }


def train_together(stream: MLRStream, trials: Sequence[MLRTrial], epoch: int) -> list[dict | FloatingPointError]:
    """Epoch `epoch` of `trials` (trials of `stream`: one alone, or a fused group's members), the
    stream's batches read once for all and every trial stepping on each: what each reports
    (`train_loss`, its learning rates), or the error it diverged with."""
    rates = [trial.set_learning_rates(epoch) for trial in trials]
    for trial in trials:
        trial.setup.train()
    group_step = stream.group_step(trials) if len(trials) > 1 and stream.graphed else None
    for feats, rows in stream.batches(epoch):
        if group_step is not None:  # on CUDA, every member's step in one graph
            group_step(feats, rows)
            continue
        for trial in trials:
            trial.step(feats, trial.train_targets.index_select(0, rows))
    trained: list[dict | FloatingPointError] = []
    for trial, rate in zip(trials, rates):
        try:
            trained.append({"train_loss": trial.step.end_epoch(epoch), **rate})
        except FloatingPointError as error:
            trained.append(error)
    return trained


def run_epochs(config: TrialConfig, state: dict | None = None) -> Iterator[tuple[dict, dict]]:
    """The MLR family's loop: train `config` from `state` (None: from scratch); yield (metrics, state) after each epoch."""
    return lifecycle.run_epochs(MLRTrial(config), state)
