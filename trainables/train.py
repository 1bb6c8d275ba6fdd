"""The per-trial training loop, plain Python: no Ray, no MLflow.

`run_epochs(config, state)` trains one setup on one (dataset, label ratio, seed) and yields, after
every epoch, the epoch's metrics and a resumable state. Starting it again from a yielded state
continues with the next epoch exactly as if it had never stopped: the shuffling of each epoch is
seeded by (seed, epoch), and the learning rate is a function of the epoch alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainables import clip as clip_lib
from trainables import data, negation, precision, setups
from trainables.config import TrainingConfig, TrialConfig
from trainables.errors import UserInputError
from trainables.features import FeatureCache
from trainables.losses import AsymmetricLoss, descend
from trainables.metrics import map_summary
from trainables.pretrain import SYNTHETIC_WEIGHTS, load_backbone, recipe_of, resolve_pretrained


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


@dataclass
class _Split:
    """One split's dataset and the targets the loop uses (partial labels for training)."""

    dataset: data.MultiLabelDataset
    targets: torch.Tensor  # [N, K] int8 in {1, 0, -1}


def _autocast(chosen_precision: str, device: torch.device):
    if chosen_precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


class _Trial:
    """Everything one trial builds once: backbone, data, features, setup, optimiser, loss."""

    def __init__(self, config: TrialConfig):
        self.config = config
        self.device = clip_lib.resolve_device(config.device)
        self.precision, _ = precision.resolve(config.training.precision, self.device)
        self.clip = load_backbone(config.backbone, config.data_dir, self.device)
        self.resolved = {"training.precision": self.precision, "backbone.quick_gelu": self.clip.quick_gelu}
        """What `auto` settings became on this device and these weights: logged with the trial's run."""
        if config.backbone.pretrained == SYNTHETIC_WEIGHTS:  # the checkpoint, named by the hash of its recipe, and the recipe
            checkpoint = Path(resolve_pretrained(config.backbone, config.data_dir))
            self.resolved["backbone.synthetic_checkpoint"] = checkpoint.name
            self.resolved["backbone.synthetic_recipe"] = recipe_of(checkpoint)

        data.check(config.dataset, config.data_dir)
        train_ds = data.build_dataset(config.dataset, "train", config.data_dir)
        test_ds = data.build_dataset(config.dataset, "test", config.data_dir)
        # Can this backbone's text encoder tell "no X" from "X"? (PositiveCoOp section 5.2)
        self.absence_cosines = {
            f"absence_cosine.{key}": value for key, value in negation.absence_cosines(self.clip, train_ds.classnames).items()
        }
        partial = data.dataset_partial_labels(train_ds, config.label_ratio, config.seed)
        self.kept_fraction = data.kept_fraction(partial, train_ds.labels)
        self.train = _Split(train_ds, torch.from_numpy(partial))
        self.test = _Split(test_ds, torch.from_numpy(test_ds.labels))

        self.cache = FeatureCache(config.cache_dir)
        # The test split is always evaluated at the test transform, a pure function of the image:
        # encode it once for every trial and epoch, whatever the training feature mode.
        self.test_features, test_valid = self.cache.dense_features(self.clip, test_ds, "test", device=self.device)
        self.test_rows = np.flatnonzero(test_valid)

        torch.manual_seed(config.seed)  # the setup's initialisation depends on the seed alone
        self.setup = setups.build(config.setup, train_ds.classnames, self.clip, **config.setup_options).to(self.device)
        self.trainable_params = setups.count_trainable(self.setup)
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
        self.loss = AsymmetricLoss.from_config(config.loss)  # its `weight` is applied in train_epoch

    # -- features ---------------------------------------------------------------------------

    def train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (dense features [B,L,d] float32, targets [B,K]) for one epoch, shuffled by (seed, epoch)."""
        cfg = self.config
        dataset, size = self.train.dataset, cfg.training.batch_size
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        if cfg.features.mode == "online":
            images = data.ImageTensors(dataset, data.train_transform(cfg.backbone.image_size), cfg.backbone.image_size)
            order = torch.randperm(len(dataset), generator=generator).tolist()
            loader = torch.utils.data.DataLoader(images, batch_size=size, sampler=order, num_workers=cfg.training.num_workers)
            for batch, idx, valid in loader:
                with torch.no_grad():
                    feats = self.clip.encode_dense(batch[valid].to(self.device)).float()
                yield feats, self.train.targets[idx[valid]].to(self.device)
            return

        view = "test" if cfg.features.mode == "cached" else ("train", epoch % cfg.features.views)
        features, valid = self.cache.dense_features(self.clip, dataset, view, device=self.device)
        rows = np.flatnonzero(valid)
        order = rows[torch.randperm(len(rows), generator=generator).numpy()]
        for start in range(0, len(order), size):
            # Sorted indices read the memory map sequentially; the batch is a set, so order within it is free.
            idx = np.sort(order[start : start + size])
            feats = torch.from_numpy(np.asarray(features[idx], dtype=np.float32)).to(self.device)
            yield feats, self.train.targets[idx].to(self.device)

    # -- one epoch --------------------------------------------------------------------------

    def set_learning_rates(self, epoch: int) -> dict[str, float]:
        lrs = {}
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config.training.lr[group["name"]], epoch, self.config.training)
            lrs[f"lr_{group['name']}"] = group["lr"]
        return lrs

    def train_epoch(self, epoch: int) -> float:
        self.setup.train()
        total, batches = 0.0, 0
        for feats, targets in self.train_batches(epoch):
            with _autocast(self.precision, self.device):
                logits = self.setup(feats)
            loss = self.loss(logits.float(), targets) * self.config.loss.weight
            total += descend(self.optimizer, loss, epoch, batches)
            batches += 1
        return total / max(batches, 1)

    @torch.no_grad()
    def evaluate(self) -> dict:
        self.setup.eval()
        with _autocast(self.precision, self.device):
            class_embeddings = self.setup.class_embeddings()
        scores = []
        size = self.config.training.eval_batch_size
        for start in range(0, len(self.test_rows), size):
            idx = self.test_rows[start : start + size]
            feats = torch.from_numpy(np.asarray(self.test_features[idx], dtype=np.float32)).to(self.device)
            with _autocast(self.precision, self.device):
                logits = self.setup.logits_from_features(feats, class_embeddings).float()
            scores.append(self.presence_score(logits).cpu())
        return map_summary(torch.cat(scores).numpy(), self.test.targets[self.test_rows].numpy())

    def presence_score(self, logits: torch.Tensor) -> torch.Tensor:
        """The probability of presence, as the loss sees it: the 2-way softmax or the sigmoid ASL."""
        if self.config.loss.activation == "sigmoid":
            return torch.sigmoid(logits[..., 0])
        return torch.softmax(logits, dim=-1)[..., 0]


def run_epochs(config: TrialConfig, state: dict | None = None) -> Iterator[tuple[dict, dict]]:
    """Train `config` from `state` (None: from scratch); yield (metrics, state) after each epoch."""
    trial = _Trial(config)
    state = state or {"epoch": 0, "best_mAP": -math.inf, "best_epoch": 0, "best_per_class_ap": None, "train_seconds": 0.0}
    if state.get("setup") is not None:
        trial.setup.load_state_dict(state["setup"])
        trial.optimizer.load_state_dict(state["optimizer"])
    on_gpu = trial.device.type == "cuda"

    for epoch in range(state["epoch"], config.training.epochs):
        started = time.perf_counter()
        lrs = trial.set_learning_rates(epoch)
        train_loss = trial.train_epoch(epoch)
        summary = trial.evaluate()
        seconds = state["train_seconds"] + time.perf_counter() - started

        improved = summary["mAP"] > state["best_mAP"]
        state = {
            "epoch": epoch + 1,
            "best_mAP": summary["mAP"] if improved else state["best_mAP"],
            "best_epoch": epoch + 1 if improved else state["best_epoch"],
            "best_per_class_ap": summary["per_class_ap"].tolist() if improved else state["best_per_class_ap"],
            "train_seconds": seconds,
            "setup": {k: v.detach().cpu().clone() for k, v in trial.setup.state_dict().items()},
            "optimizer": trial.optimizer.state_dict(),
        }
        metrics = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "mAP": summary["mAP"],
            "best_mAP": state["best_mAP"],
            "best_epoch": state["best_epoch"],
            "best_per_class_ap": state["best_per_class_ap"],
            "classes_without_positives": summary["classes_without_positives"],
            "classnames": trial.train.dataset.classnames,
            "trainable_params": trial.trainable_params,
            "train_seconds": seconds,
            "gpu_seconds": seconds if on_gpu else 0.0,
            "kept_fraction": trial.kept_fraction,
            "resolved": trial.resolved,
            **trial.absence_cosines,
            **lrs,
        }
        yield metrics, state
