"""The per-trial loop of the OOD family, plain Python: no Ray, no MLflow.

`run_ood_epochs(config, state)` yields, after every epoch, the epoch's metrics and a resumable
state, as `trainables.mlr.train.run_epochs` does for multi-label recognition. Image features are
CLIP's global embeddings, encoded once into the shared feature cache and kept on the device; the
text side is all that trains. The untuned variants (`neglabel`, `zero_shot`) evaluate once, as
epoch 1. An epoch's random draws (order, mixing weights, templates, partners) are made on the host
before it starts and uploaded once, so that a step (`trainables.step`) never waits for the device
and can be one CUDA graph.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from trainables import lifecycle
from trainables.backbone import load_backbone
from trainables.devices import device_name, trial_device
from trainables.features.cache import FeatureCache
from trainables.features.rows import read_all
from trainables.ood import collect, lapt, negatives
from trainables.ood.config import (
    OODTrialConfig,
)
from trainables.ood.data import id_dataset, ood_set
from trainables.ood.losses import (
    cross_distribution_mix,
    cross_modal_mix,
    draw_partners,
    one_hot,
    soft_cross_entropy,
)
from trainables.ood.metrics import METRIC_NAMES, ood_metrics, top1_accuracy
from trainables.ood.score import ood_scores
from trainables.step import TrainingStep, snapshot, use_cuda_graph

PRIMARY_METRIC = "auroc"
"""The metric a LAPT trial is ranked by: the mean AUROC over its OOD sets, in percent."""


class OODTrial:
    """One OOD trial (`trainables.lifecycle.Trial`): backbone, features, negative labels, examples
    and prompts set up once, then driven epoch by epoch by `trainables.lifecycle.run_epochs`."""

    metric = PRIMARY_METRIC

    def __init__(self, config: OODTrialConfig):
        self.config = config
        self.device = trial_device(config.device)
        graphed = use_cuda_graph(config.training.cuda_graph, self.device)
        self.clip = load_backbone(config.backbone, config.data_dir, self.device)
        self.resolved = {"training.cuda_graph": graphed, "device": device_name(self.device)}
        """What `auto` settings became on this device: logged with the trial's run."""
        self.scale = self.clip.logit_scale
        cache = FeatureCache(config.cache_dir)

        def features(dataset) -> tuple[torch.Tensor, np.ndarray]:
            """The unit image embeddings of `dataset` [N, d] (host memory), and which rows are real images."""
            stored = cache.dense_features(self.clip, dataset, "test", encoding="global")
            return F.normalize(read_all(stored.features[:, 0]), dim=-1), stored.valid

        train, test = id_dataset(config.id_dataset, "train", config.data_dir), id_dataset(config.id_dataset, "test", config.data_dir)
        self.id_names = train.classnames
        self.num_id = len(self.id_names)
        test_features, test_valid = features(test)
        self.id_test = test_features[test_valid].to(self.device)
        self.id_test_labels = test.labels[test_valid].argmax(axis=1)
        self.ood_tests = {}
        for ood in config.ood_sets:
            ood_features, ood_valid = features(ood_set(ood, config.data_dir))
            self.ood_tests[ood.name] = (ood.group, ood_features[ood_valid].to(self.device))

        self.negative_labels = lapt.mine_negative_labels(
            self.clip, self.id_names, negatives.corpus(config.negatives), config.negatives.count, config.negatives.percentile, config.cache_dir
        )
        self.handcrafted = lapt.handcrafted_label_features(self.clip, self.id_names, self.negative_labels).to(self.device)
        self.prompts = None
        if config.options.variant == "lapt":
            self._collect(features, train)
            torch.manual_seed(config.seed)  # the prompts' initialisation depends on the seed alone
            self.prompts = lapt.LAPTPrompts(self.id_names, self.negative_labels.all, self.clip, config.options.n_ctx).to(self.device)
            opt = config.training.optimizer
            self.optimizer = torch.optim.SGD(
                self.prompts.parameters(), lr=config.training.lr, momentum=opt.momentum,
                weight_decay=opt.weight_decay, nesterov=opt.nesterov,
            )  # fmt: skip
            self.step = TrainingStep(
                self.loss_of, self.optimizer, self.device, graphed, graph_required=config.training.cuda_graph is True,
                full_rows=min(config.training.batch_size, len(self.labels)),
            )  # fmt: skip

    # -- training examples ------------------------------------------------------------------

    def _collect(self, features, train) -> None:
        """Training features and labels: ID labels first (0..K-1), then the negative labels that train."""
        cfg = self.config
        self.train_negatives = negatives.training_negatives(self.negative_labels, cfg.negatives.train_count).to(self.device)
        train_negatives = len(self.train_negatives)
        self.num_labels = self.num_id + train_negatives
        label_features = torch.cat([self.handcrafted[: self.num_id], self.handcrafted[self.num_id + self.train_negatives]])
        parts = []
        pool = None
        if cfg.collector.pool is not None:
            pool_features, pool_valid = features(ood_set(cfg.collector.pool, cfg.data_dir))
            pool = pool_features[pool_valid]
        if cfg.collector.kind == "id_train":
            train_features, train_valid = features(train)
            rows, labels = collect.id_examples(train.labels[train_valid])
            parts.append((train_features[train_valid][rows], torch.from_numpy(labels)))
            retrieved_labels = torch.arange(self.num_id, self.num_id + train_negatives) if pool is not None else None
        else:
            retrieved_labels = torch.arange(self.num_id + train_negatives)
        if retrieved_labels is not None:
            chosen = collect.retrieve(pool, label_features[retrieved_labels].cpu(), cfg.collector.per_label)
            parts.append((pool[chosen.flatten()], retrieved_labels.repeat_interleave(cfg.collector.per_label)))
        examples, labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        kept = collect.keep_fraction(labels.numpy(), cfg.label_ratio, cfg.seed)
        self.labels = labels[kept]  # on the host too: the partners of cross-distribution mixing are drawn there
        self.examples, self.device_labels = examples[kept].to(self.device), self.labels.to(self.device)
        # Frozen hand-crafted features of each training label under the TIP templates.
        names = self.id_names + [self.negative_labels.all[i] for i in self.train_negatives.tolist()]
        self.label_templates = lapt.template_features(self.clip, names).to(self.device) if cfg.mixing.cross_modal else None

    # -- one epoch --------------------------------------------------------------------------

    def train_epoch(self, epoch: int) -> dict[str, float]:
        if self.prompts is None:  # the untuned variants learn nothing
            return {"train_loss": 0.0}
        batch_size = self.config.training.batch_size
        steps_per_epoch = math.ceil(len(self.labels) / batch_size)
        total_steps = self.config.training.epochs * steps_per_epoch
        draws = self._draws(epoch)
        for step, (start, rows) in enumerate(zip(range(0, len(self.labels), batch_size), draws["rows"])):
            self._set_learning_rate(epoch * steps_per_epoch + step, total_steps)
            end = start + len(rows)
            self.step(
                self.examples.index_select(0, draws["order"][start:end]),
                self.device_labels.index_select(0, draws["order"][start:end]),
                draws["templates"][start:end], draws["partners"][start:end],
                draws["cross_modal_lam"][step], draws["cross_distribution_lam"][step], draws["paired"][step],
            )  # fmt: skip
        return {"train_loss": self.step.end_epoch(epoch)}

    def _draws(self, epoch: int) -> dict:
        """Every random draw of an epoch, made on the host in the order the steps use them and
        uploaded once: the batches' rows (`order`), and per step the mixing weights, the TIP
        template of each sample, each sample's partner row within its batch and whether the batch
        has pairs. Seeded by (seed, epoch), so a resumed trial continues exactly."""
        cfg, mixing = self.config, self.config.mixing
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        mixing_weights = np.random.default_rng([cfg.seed, epoch])
        order = torch.randperm(len(self.labels), generator=generator)
        rows = list(order.split(cfg.training.batch_size))
        templates, partners, cross_modal_lams, cross_distribution_lams, paired = [], [], [], [], []
        for batch in rows:
            if mixing.cross_modal:
                cross_modal_lams.append(float(mixing_weights.beta(*mixing.cross_modal_beta)))
                templates.append(torch.randint(len(lapt.TIP_TEMPLATES), (len(batch),), generator=generator))
            else:
                cross_modal_lams.append(0.0)
                templates.append(torch.zeros(len(batch), dtype=torch.int64))
            pairs = None
            if mixing.cross_distribution:
                cross_distribution_lams.append(float(mixing_weights.beta(*mixing.cross_distribution_beta)))
                pairs = draw_partners(self.labels[batch], self.num_id, generator)
            else:
                cross_distribution_lams.append(0.0)
            partners.append(pairs if pairs is not None else torch.arange(len(batch)))  # unpaired: weighted 0
            paired.append(float(pairs is not None))

        def upload(values, dtype: torch.dtype | None = None) -> torch.Tensor:
            return torch.as_tensor(values, dtype=dtype).to(self.device)

        return {
            "rows": rows,
            "order": upload(order),
            "templates": upload(torch.cat(templates)),
            "partners": upload(torch.cat(partners)),
            # float64, as the Python numbers they were: each operation rounds them as it did those.
            "cross_modal_lam": upload(cross_modal_lams, torch.float64),
            "cross_distribution_lam": upload(cross_distribution_lams, torch.float64),
            "paired": upload(paired, torch.float32),
        }

    def loss_of(self, feats, labels, templates, partners, cross_modal_lam, cross_distribution_lam, paired) -> torch.Tensor:
        """LAPT's loss of one batch, given its draws (`_draws`); what `TrainingStep` runs and captures."""
        mixing = self.config.mixing
        text = self.prompts.text_features(self.train_negatives)
        inputs = cross_modal_mix(feats, self.label_templates[labels, templates], cross_modal_lam) if mixing.cross_modal else feats
        loss = soft_cross_entropy(self.scale * inputs @ text.T, one_hot(labels, self.num_labels))
        if mixing.cross_distribution:
            mixed = cross_distribution_mix(
                feats, labels, partners, self.num_id, self.num_labels, cross_distribution_lam, mixing.beta
            )
            # A batch without pairs adds nothing (multiplying by 0 keeps the graph's shape fixed).
            loss = loss + paired * soft_cross_entropy(self.scale * mixed[0] @ text.T, mixed[1])
        return loss

    def _set_learning_rate(self, step: int, total_steps: int) -> None:
        """LAPT's per-iteration cosine from lr down to lr * 1e-8."""
        base = self.config.training.lr
        floor = base * 1e-8
        rate = floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * step / max(total_steps, 1)))
        self.step.set_learning_rates([rate] * len(self.optimizer.param_groups))

    # -- evaluation -------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Per OOD set and averaged (all, near, far): the OOD metrics in percent; ID top-1 accuracy."""
        options = self.config.options
        if self.prompts is not None:
            text = self.prompts.text_features()
        elif options.variant == "neglabel":
            text = self.handcrafted
        else:
            text = lapt.encode_prompts(self.clip, [lapt.ZERO_SHOT_TEMPLATE.format(n.replace("_", " ")) for n in self.id_names]).to(self.device)

        batch_size = self.config.training.eval_batch_size

        def score(image_features: torch.Tensor) -> np.ndarray:
            if options.variant == "zero_shot":  # the maximum softmax probability over the ID labels
                rule, groups = "msp", 1
            else:
                rule, groups = "grouped", min(options.groups, text.shape[0] - self.num_id)
            return ood_scores(
                image_features, text, self.num_id, rule=rule, groups=groups, scale=self.scale, batch_size=batch_size
            ).cpu().numpy()  # fmt: skip

        id_scores = score(self.id_test)
        id_logits = torch.cat([chunk @ text[: self.num_id].T for chunk in self.id_test.split(batch_size)])  # [N, K]: small
        summary = {"id_accuracy": 100 * top1_accuracy(id_logits.cpu().numpy(), self.id_test_labels)}
        per_group: dict[str, list[dict]] = {"all": [], "near": [], "far": []}
        for name, (group, features) in self.ood_tests.items():
            metrics = {k: 100 * v for k, v in ood_metrics(id_scores, score(features)).items()}
            summary |= {f"{metric}.{name}": value for metric, value in metrics.items()}
            per_group["all"].append(metrics)
            per_group[group].append(metrics)
        for group, entries in per_group.items():  # `auroc`: the mean over every set; `auroc.near`: over the near ones
            suffix = "" if group == "all" else f".{group}"
            summary |= {f"{m}{suffix}": float(np.mean([e[m] for e in entries])) for m in METRIC_NAMES if entries}
        return summary


    # -- the lifecycle's checkpoint and report ----------------------------------------------

    @property
    def epochs(self) -> int:
        return self.config.training.epochs if self.prompts is not None else 1

    def load(self, state: dict) -> None:
        if self.prompts is not None and state.get("prompts") is not None:
            self.prompts.load_state_dict(state["prompts"])
            self.optimizer.load_state_dict(state["optimizer"])

    def learned(self) -> dict:
        if self.prompts is None:
            return {}
        return {"prompts": snapshot(self.prompts.state_dict()), "optimizer": snapshot(self.optimizer.state_dict())}

    def best_of(self, evaluated: dict) -> dict:
        return {}

    def report(self, evaluated: dict, state: dict) -> dict:
        return {
            **evaluated,
            "trainable_params": 0 if self.prompts is None else sum(p.numel() for p in self.prompts.parameters()),
            "num_negative_labels": len(self.negative_labels.all),
            "negative_labels": self.negative_labels.all,
            "resolved": self.resolved,
            "warnings": self.step.warnings() if self.prompts is not None else {},
        }


def run_ood_epochs(config: OODTrialConfig, state: dict | None = None) -> Iterator[tuple[dict, dict]]:
    """The OOD family's loop: train `config` from `state` (None: from scratch); yield (metrics, state) after each epoch."""
    return lifecycle.run_epochs(OODTrial(config), state)
