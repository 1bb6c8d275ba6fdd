"""The resolved configuration of one LAPT trial (the OOD-detection task family).

Like `trainables.config.TrialConfig` for multi-label recognition: what the per-trial loop needs,
nothing about scheduling. The orchestrator's spec composes these models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from trainables.config import BackboneConfig, OptimizerConfig, Strict


class IDDatasetConfig(Strict):
    """The in-distribution set: single-label images of the K ID classes, a train and a test split."""

    name: str
    kind: Literal["imagenet", "manifest", "synthetic"]
    root: Path | None = None
    """`imagenet`: the folder with `train/<wnid>/*` and `val/<wnid>/*`; `manifest`: the folder the
    manifests' relative paths start from (optional)."""
    classnames_file: Path | None = None
    """`imagenet`: lines `<wnid> <class name>` (or `<wnid>\\t<name>`); default: the folder names."""
    train_manifest: Path | None = None
    test_manifest: Path | None = None
    """`manifest`: CSV `image,labels` with one class name per image (the MLR manifest format)."""
    skip_corrupt_images: bool = False
    synthetic_classes: int = Field(4, ge=2, le=8)
    """`synthetic`: the first N shape classes are ID (the demo's tiny CLIP knows the first eight)."""
    synthetic_per_class: int = Field(32, ge=2)
    """`synthetic`: training images per class; the test split has half as many."""
    synthetic_image_size: int = Field(128, ge=32)

    @model_validator(mode="after")
    def _kind_fields(self) -> "IDDatasetConfig":
        if self.kind == "imagenet" and self.root is None:
            raise ValueError(f"ID dataset '{self.name}' of kind imagenet needs a root")
        if self.kind == "manifest" and (self.train_manifest is None or self.test_manifest is None):
            raise ValueError(f"ID dataset '{self.name}' of kind manifest needs train_manifest and test_manifest")
        return self


class ImageSetConfig(Strict):
    """A set of unlabelled images: a folder, a manifest, or generated shapes."""

    name: str
    kind: Literal["folder", "manifest", "synthetic"]
    root: Path | None = None
    """`folder`: every image under it (recursively); `manifest`: a CSV with an `image` column."""
    synthetic_classes: list[int] = Field(default_factory=list)
    """`synthetic`: one object of one of these shape classes per image; empty: no object (a texture)."""
    synthetic_count: int = Field(64, ge=2)
    synthetic_image_size: int = Field(128, ge=32)

    @model_validator(mode="after")
    def _kind_fields(self) -> "ImageSetConfig":
        if self.kind in ("folder", "manifest") and self.root is None:
            raise ValueError(f"image set '{self.name}' of kind {self.kind} needs a root")
        return self


class OODSetConfig(ImageSetConfig):
    """One OOD test set: images of none of the ID classes."""

    group: Literal["near", "far"]
    """Near-OOD (SSB-hard, NINCO) or far-OOD (iNaturalist, SUN, Places, Textures): tables average each group."""


class NegativesConfig(Strict):
    """Negative-label mining (`trainables.ood.negatives`)."""

    corpus: Literal["wordnet", "common", "word_list"] = "wordnet"
    """`wordnet`: WordNet's nouns and adjectives (NegLabel's corpus); `common`: the 2,900 most
    frequent of them, shipped with the package (no WordNet install needed); `word_list`: a file."""
    wordnet_dir: Path | None = None
    """A folder with WordNet's `data.noun` and `data.adj`; default: Debian's and NLTK's places."""
    word_list: Path | None = None
    count: int = Field(10_000, ge=1)
    """M: negative labels kept (LAPT trains with 1,000 and tests with 10,000)."""
    train_count: int | None = Field(None, ge=1)
    """Negative labels that get training images; default `count`: the `train_count` farthest of the
    mined list, nouns and adjectives in proportion (`trainables.ood.negatives.training_negatives`)."""
    percentile: float = Field(95.0, gt=0.0, le=100.0)

    @model_validator(mode="after")
    def _word_list_given(self) -> "NegativesConfig":
        if self.corpus == "word_list" and self.word_list is None:
            raise ValueError("negatives.corpus word_list needs negatives.word_list")
        if self.train_count is not None and self.train_count > self.count:
            raise ValueError(f"negatives.train_count ({self.train_count}) is above negatives.count ({self.count})")
        return self


class CollectorConfig(Strict):
    """Where each label's training images come from (`trainables.ood.collect`)."""

    kind: Literal["id_train", "retrieval"] = "retrieval"
    """`id_train`: the ID training images for the ID labels (no images for the negative labels);
    `retrieval`: the top `per_label` images of a local pool by CLIP similarity to each label's prompt."""
    pool: ImageSetConfig | None = None
    """`retrieval`: the image pool (any images; a folder, a manifest, or generated)."""
    per_label: int = Field(8, ge=1)
    """Images per label (LAPT keeps 8 per label after filtering)."""

    @model_validator(mode="after")
    def _pool_given(self) -> "CollectorConfig":
        if self.kind == "retrieval" and self.pool is None:
            raise ValueError("collector kind retrieval needs a pool")
        return self


class MixingConfig(Strict):
    """LAPT's two feature-mixing strategies (section 3.3), each switchable."""

    cross_modal: bool = True
    """Mix each image feature with a frozen hand-crafted text feature of its label, lambda ~ Beta(a, b)."""
    cross_modal_beta: tuple[float, float] = (1.0, 1.0)
    cross_distribution: bool = True
    """Mix ID samples with negative-label samples; the target moves min(beta * lambda, 1) to the negatives."""
    cross_distribution_beta: tuple[float, float] = (1.0, 1.0)
    beta: float = Field(0.0, ge=0.0)
    """The extra pull of a mixed target toward the negative labels (the released script uses 0)."""


class LAPTOptions(Strict):
    n_ctx: int = Field(2, ge=1)
    """Context tokens of each shared prompt (LAPT's train.sh: 2; its test.sh: 4)."""
    groups: int = Field(100, ge=1)
    """NegLabel's score groups at evaluation."""
    variant: Literal["lapt", "zero_shot", "neglabel"] = "lapt"
    """`lapt`: the tuned prompts; `neglabel`: NegLabel's hand-crafted prompts, untuned;
    `zero_shot`: hand-crafted ID prompts alone, the maximum softmax probability (MCM)."""


class OODTrainingConfig(Strict):
    epochs: int = Field(10, ge=0)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    lr: float = Field(0.01, gt=0.0)
    optimizer: OptimizerConfig = OptimizerConfig(momentum=0.9, weight_decay=1e-5, nesterov=True)
    """LAPT: SGD with Nesterov momentum 0.9, weight decay 1e-5, lr 0.01, a per-step cosine to lr * 1e-8."""
    cuda_graph: Literal["auto"] | bool = "auto"
    """Run each training step as one CUDA graph (`trainables.step`): `auto` on CUDA devices, off
    elsewhere; `true` on a device without CUDA fails the trial."""


class OODTrialConfig(Strict):
    setup: Literal["lapt"] = "lapt"
    options: LAPTOptions = LAPTOptions()
    id_dataset: IDDatasetConfig
    ood_sets: list[OODSetConfig] = Field(min_length=1)
    backbone: BackboneConfig = BackboneConfig(model="ViT-B-16", image_size=224)
    negatives: NegativesConfig = NegativesConfig()
    collector: CollectorConfig = CollectorConfig(kind="id_train")
    mixing: MixingConfig = MixingConfig()
    training: OODTrainingConfig = OODTrainingConfig()
    label_ratio: float = Field(1.0, gt=0.0, le=1.0)
    """The fraction of each label's collected training images used."""
    seed: int = 0
    cache_dir: Path
    data_dir: Path
    device: str = "auto"
