"""What the MLR trials of one stream share: the trials of a spec that read the same data (dataset,
backbone, features, seed, batch size and epochs; `STREAM_FIELDS` says which) see the same batches
in the same order, so the backbone, the datasets, the cached features on the device or the online
images and their encoding are built and computed once for all of them (`MLRStream`). A trial alone
has a stream of its own; trials fused in a group (`trainables.mlr.fused`) share one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from trainables import data
from trainables.backbone import precision
from trainables.backbone.precision import autocast
from trainables.backbone.weights import SYNTHETIC_WEIGHTS, load_backbone, recipe_of, resolve_pretrained
from trainables.devices import default_workers, device_name, trial_device
from trainables.features import rows as feature_rows
from trainables.features.cache import FeatureCache
from trainables.features.decoded import DecodedStore
from trainables.features.encoding import RowLoader, train_views
from trainables.mlr import negation
from trainables.mlr.config import TrialConfig
from trainables.step import GroupStep, use_cuda_graph

MEMBER_FIELDS = {"setup", "setup_options", "loss", "label_ratio"}
"""What the trials of one stream may differ in, beside the training fields below: what they learn,
how, and which labels they know."""

MEMBER_TRAINING_FIELDS = {"lr", "optimizer", "warmup_epochs", "warmup_lr", "scheduler"}
"""The training fields a trial of a stream has of its own (its optimiser and learning-rate schedule)."""


def stream_key(config: TrialConfig) -> str:
    """What defines the data stream a trial reads (every field but `MEMBER_FIELDS` and
    `MEMBER_TRAINING_FIELDS`): trials with the same key see the same batches."""
    fields = config.model_dump(mode="json", exclude=MEMBER_FIELDS)
    fields["training"] = {k: v for k, v in fields["training"].items() if k not in MEMBER_TRAINING_FIELDS}
    return json.dumps(fields, sort_keys=True)


class OnlineImages(RowLoader):
    """The `online` mode's training images: decoded and augmented by the trial's workers (started
    once, kept for every epoch), as uint8, pinned for a CUDA device; normalised there. Image i of
    epoch e is augmented under the seed (trial seed, e, i), whichever worker decodes it, so a
    resumed trial sees what it would have seen."""

    def __init__(self, dataset: data.MultiLabelDataset, config: TrialConfig, device: torch.device):
        size = config.backbone.image_size
        workers = config.training.num_workers
        if workers is None:
            workers = max(1, int(config.cpus)) if config.cpus is not None else default_workers()
        if config.features.decoded_store:  # decoded and resized once, for every epoch and trial
            dataset = DecodedStore(config.cache_dir).images(dataset, size, workers)
        transform = data.train_transform(size, normalised=False, augmentation=config.features.augmentation)
        images = data.ImageTensors(dataset, transform, size, augmentation_seed=config.seed, dtype=torch.uint8)
        super().__init__(images, config.training.batch_size, workers, device)


class MLRStream:
    """The shared part of the trials of one stream, set up once in the named steps below."""

    def __init__(self, config: TrialConfig):
        self.config = config
        self.device = trial_device(config.device)
        self._set_up_backbone()
        self._set_up_data()
        self._set_up_features()
        self._group_step: tuple[tuple[int, ...], GroupStep] | None = None

    def _set_up_backbone(self) -> None:
        config = self.config
        self.precision, _ = precision.resolve(config.training.precision, self.device)
        self.graphed = use_cuda_graph(config.training.cuda_graph, self.device)
        self.clip = load_backbone(config.backbone, config.data_dir, self.device)
        self.resolved = {
            "training.precision": self.precision, "backbone.quick_gelu": self.clip.quick_gelu,
            "training.cuda_graph": self.graphed, "device": device_name(self.device),
        }  # fmt: skip
        """What `auto` settings became on this device and these weights: logged with the trial's run."""
        if config.backbone.pretrained == SYNTHETIC_WEIGHTS:  # the checkpoint, named by the hash of its recipe, and the recipe
            checkpoint = Path(resolve_pretrained(config.backbone, config.data_dir))
            self.resolved["backbone.synthetic_checkpoint"] = checkpoint.name
            self.resolved["backbone.synthetic_recipe"] = recipe_of(checkpoint)

    def _set_up_data(self) -> None:
        config = self.config
        data.check(config.dataset, config.data_dir)
        self.train_set = data.build_dataset(config.dataset, "train", config.data_dir)
        self.test_set = data.build_dataset(config.dataset, "test", config.data_dir)
        # Can this backbone's text encoder tell "no X" from "X"? (PositiveCoOp section 5.2)
        self.absence_cosines = {
            f"absence_cosine.{key}": value for key, value in negation.absence_cosines(self.clip, self.train_set.classnames).items()
        }

    def _set_up_features(self) -> None:
        """The test split is always evaluated at the test transform, a pure function of the image:
        encoded once for every trial and epoch, whatever the training feature mode. What is read
        most goes on the device first: the test split (every epoch), then the train views."""
        config = self.config
        cache = FeatureCache(config.cache_dir, augmentation=config.features.augmentation)
        stored = [cache.dense_features(self.clip, self.test_set, "test")]
        views = train_views(config.features)
        stored += [cache.dense_features(self.clip, self.train_set, view) for view in views]
        budget = feature_rows.memory_budget(self.device, config.features.device_memory, config.gpu_share)
        placed = feature_rows.place([s.features for s in stored], self.device, budget)
        self.test_features, self.test_rows = placed[0], np.flatnonzero(stored[0].valid)
        self.test_targets = torch.from_numpy(self.test_set.labels[self.test_rows]).to(self.device)
        self.train_features = [(rows, np.flatnonzero(s.valid)) for rows, s in zip(placed[1:], stored[1:])]
        self.resolved["features.resident"] = ",".join(
            name for name, rows in zip(["test", *(f"train{i}" for i in range(len(views)))], placed) if rows.resident
        ) or "none"
        if config.features.mode == "online":
            self.online_images = OnlineImages(self.train_set, config, self.device)

    def group_step(self, trials: Sequence) -> GroupStep:
        """One step for `trials` (MLR trials of this stream) together, captured as one CUDA graph:
        kept while the same trials train together (a member that failed leaves, and the rest are captured anew)."""
        key = tuple(id(trial) for trial in trials)
        if self._group_step is None or self._group_step[0] != key:
            first = trials[0].step  # every member's step has the stream's settings: capture them as its own would be
            step = GroupStep(
                [(trial.step, trial.train_targets) for trial in trials], self.device, self.graphed,
                graph_required=first.graph_required, full_rows=first.full_rows,
            )  # fmt: skip
            self._group_step = (key, step)
        return self._group_step[1]

    # -- the batches -----------------------------------------------------------------------------

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (dense features [B,L,d] float32, the batch's training-set rows [B] on the device) for
        one epoch, shuffled by (seed, epoch): read, augmented and encoded once for every trial of the stream."""
        cfg = self.config
        dataset, size = self.train_set, cfg.training.batch_size
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        if cfg.features.mode == "online":
            order = torch.randperm(len(dataset), generator=generator).tolist()
            rows = [(epoch, index) for index in order]  # image i's draws: (seed, epoch, i)
            encoder_precision = precision.encoder_precision(self.device)
            for batch, idx, valid in self.online_images.batches(rows):
                with torch.no_grad(), autocast(encoder_precision, self.device):
                    pixels = data.normalise(batch[valid].to(self.device, non_blocking=True))
                    feats = self.clip.encode_dense(pixels).float()
                yield feats, idx[valid].to(self.device)
            return
        features, rows = self.train_features[epoch % len(self.train_features)]  # `cached`: one view
        for index, feats in features.batches(feature_rows.batch_rows(rows, size, generator)):
            yield feats, index
