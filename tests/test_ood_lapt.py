"""LAPT: the mixing formulas, the collector, the prompts, the OOD data and the per-trial loop."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from trainables.errors import UserInputError
from trainables.ood import collect, lapt
from trainables.ood.config import IDDatasetConfig, OODSetConfig, OODTrialConfig
from trainables.ood.data import id_dataset, ood_set
from trainables.ood.losses import (
    cross_distribution_mix,
    cross_modal_mix,
    draw_partners,
    soft_cross_entropy,
)
from trainables.ood.negatives import Words, training_negatives
from trainables.ood.train import run_ood_epochs

# -- the loss and the two mixings, written out ---------------------------------------------------------


def test_soft_cross_entropy_is_the_written_sum():
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    targets = torch.tensor([[0.2, 0.8, 0.0], [0.0, 0.5, 0.5]])
    expected = 0.0
    for row in range(2):
        normaliser = math.log(sum(math.exp(v) for v in logits[row].tolist()))
        expected -= sum(t * (v - normaliser) for t, v in zip(targets[row].tolist(), logits[row].tolist()))
    assert soft_cross_entropy(logits, targets).item() == pytest.approx(expected / 2, rel=1e-6)
    with pytest.raises(ValueError, match="differ in shape"):
        soft_cross_entropy(logits, targets[:, :2])


def test_cross_modal_mix_interpolates_the_unit_features():
    image, text = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    mixed = cross_modal_mix(image, text, 0.25)
    # 0.25 * (1, 0) + 0.75 * (0, 1), normalised
    assert mixed[0].tolist() == pytest.approx([0.25 / math.hypot(0.25, 0.75), 0.75 / math.hypot(0.25, 0.75)])


def test_cross_distribution_mix_pairs_across_the_distributions_and_mixes_targets():
    num_id, num_labels, lam, beta = 2, 5, 0.7, 0.5
    features = F.normalize(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    labels = torch.tensor([0, 1, 3, 4])  # two ID samples, two negative-label samples
    partners = draw_partners(labels, num_id, torch.Generator().manual_seed(1))
    mixed, targets = cross_distribution_mix(features, labels, partners, num_id, num_labels, lam, beta)
    shift = min(beta * lam, 1.0)
    for row in range(4):
        # Each mixed feature is lam * f_i + (1 - lam) * f_j for some j of the other distribution.
        candidates = [j for j in range(4) if (labels[j] < num_id) != (labels[row] < num_id)]
        matches = [j for j in candidates if torch.allclose(mixed[row], F.normalize(lam * features[row] + (1 - lam) * features[j], dim=0), atol=1e-6)]
        assert len(matches) == 1, row
        partner = matches[0]
        expected = torch.zeros(num_labels)
        expected[num_id:] += shift / (num_labels - num_id)
        expected[labels[row]] += (1 - shift) * lam
        expected[labels[partner]] += (1 - shift) * (1 - lam)
        torch.testing.assert_close(targets[row], expected)
        assert targets[row].sum().item() == pytest.approx(1.0)
    assert draw_partners(labels[:2], num_id, torch.Generator()) is None  # no negative-label sample to pair with


# -- the collector ---------------------------------------------------------------------------------


def test_retrieval_returns_the_most_similar_pool_images_in_order():
    pool = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6], [0.6, 0.8], [1.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # label 0: cosines 1, 0, .8, .6, 1 -> 0 and 4 tie (lower index first), then 2; label 1: 1, .8, .6
    assert collect.retrieve(pool, labels, 3).tolist() == [[0, 4, 2], [1, 3, 2]]
    with pytest.raises(ValueError, match="pool of 5"):
        collect.retrieve(pool, labels, 6)


def test_keep_fraction_per_label_is_nested_across_fractions():
    labels = np.repeat(np.arange(3), 10)
    half, most = collect.keep_fraction(labels, 0.5, seed=1), collect.keep_fraction(labels, 0.8, seed=1)
    assert np.bincount(labels[half]).tolist() == [5, 5, 5] and np.bincount(labels[most]).tolist() == [8, 8, 8]
    assert set(half) <= set(most)
    assert not np.array_equal(half, collect.keep_fraction(labels, 0.5, seed=2))


# -- prompts -----------------------------------------------------------------------------------------


def test_lapt_prompts_share_one_context_per_distribution_and_train_only_it(tiny_rn):
    prompts = lapt.LAPTPrompts(["circle", "square"], ["kite", "pale", "river"], tiny_rn, n_ctx=2)
    assert prompts.id_prompt.ctx.shape == (2, tiny_rn.text_width) == prompts.negative_prompt.ctx.shape
    text = prompts.text_features(torch.tensor([0, 2]))
    assert text.shape == (4, tiny_rn.embed_dim)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(prompts.text_features()[[0, 1, 2, 4]], text)
    text.sum().backward()
    assert all(p.grad is not None and (p.grad != 0).any() for p in prompts.parameters())
    assert not any(p.requires_grad for p in tiny_rn.parameters())


def test_encoded_prompts_are_clips_text_features(tiny_rn):
    import open_clip

    prompts = ["The nice kite.", "This is a pale photo."]
    expected = F.normalize(tiny_rn.model.encode_text(open_clip.get_tokenizer(tiny_rn.model_name)(prompts)), dim=-1)
    torch.testing.assert_close(lapt.encode_prompts(tiny_rn, prompts, batch_size=1), expected, atol=1e-5, rtol=1e-5)


# -- data ------------------------------------------------------------------------------------------


def test_generated_id_and_ood_sets(tmp_path):
    cfg = IDDatasetConfig(name="shapes-id", kind="synthetic", synthetic_classes=3, synthetic_per_class=4, synthetic_image_size=32)
    train, test = id_dataset(cfg, "train", tmp_path), id_dataset(cfg, "test", tmp_path)
    assert train.classnames == ["circle", "square", "triangle"]
    assert train.labels.sum(axis=0).tolist() == [4, 4, 4] and test.labels.sum(axis=0).tolist() == [2, 2, 2]
    assert (train.labels.sum(axis=1) == 1).all()
    near = ood_set(OODSetConfig(name="near", group="near", kind="synthetic", synthetic_classes=[4], synthetic_count=3, synthetic_image_size=32), tmp_path)
    far = ood_set(OODSetConfig(name="far", group="far", kind="synthetic", synthetic_count=3, synthetic_image_size=32), tmp_path)
    assert near.labels.shape == (3, 0) and near.fingerprint != far.fingerprint
    assert np.asarray(near.load_image(0)).shape == (32, 32, 3)


def test_imagenet_layout_and_folder_ood_sets(tmp_path):
    for split, wnid, count in (("train", "n01", 2), ("train", "n02", 1), ("val", "n01", 1), ("val", "n02", 1)):
        folder = tmp_path / "imagenet" / split / wnid
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            Image.new("RGB", (8, 8)).save(folder / f"{index}.JPEG")
    names = tmp_path / "names.txt"
    names.write_text("n01 goldfish\nn02\tgreat white shark\n")
    cfg = IDDatasetConfig(name="in", kind="imagenet", root=tmp_path / "imagenet", classnames_file=names)
    train = id_dataset(cfg, "train")
    assert train.classnames == ["goldfish", "great white shark"] and train.labels.argmax(axis=1).tolist() == [0, 0, 1]
    assert id_dataset(cfg, "test").image_ids == ["val/n01/0.JPEG", "val/n02/0.JPEG"]
    ood = ood_set(OODSetConfig(name="textures", group="far", kind="folder", root=tmp_path / "imagenet" / "val"))
    assert len(ood) == 2 and ood.labels.shape == (2, 0)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: OODSetConfig(name="sun", group="far", kind="folder", root=root / "missing"), "image set 'sun': .*missing is not a folder of images"),
        (lambda root: OODSetConfig(name="sun", group="far", kind="folder", root=root), "image set 'sun': no images"),
        (lambda root: OODSetConfig(name="sun", group="far", kind="manifest", root=root / "none.csv"), "manifest .*none.csv does not exist"),
    ],
)
def test_a_bad_ood_set_is_one_clear_line(tmp_path, make, message):
    with pytest.raises(UserInputError, match=message) as error:
        ood_set(make(tmp_path))
    assert "\n" not in str(error.value)


def test_an_id_manifest_needs_one_label_per_image(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "train.csv").write_text("image,labels\na.png,cat;dog\n")
    (tmp_path / "test.csv").write_text("image,labels\na.png,cat\n")
    cfg = IDDatasetConfig(name="pets", kind="manifest", train_manifest=tmp_path / "train.csv", test_manifest=tmp_path / "test.csv")
    with pytest.raises(UserInputError, match="a.png has 2 labels; an ID set has one per image"):
        id_dataset(cfg, "train")


# -- the loop --------------------------------------------------------------------------------------


def _trial(tmp_path: Path, variant: str, device: str = "cpu", **overrides) -> OODTrialConfig:
    words = tmp_path / "words.txt"
    words.write_text("\n".join(["kite", "river", "violin", "cloud", "anchor", "tulip", "adj:pale", "adj:loud"]) + "\n")
    return OODTrialConfig(
        options={"variant": variant, "groups": 2, "n_ctx": 2},
        id_dataset={"name": "shapes-id", "kind": "synthetic", "synthetic_classes": 3, "synthetic_per_class": 6, "synthetic_image_size": 64},
        ood_sets=[{"name": "near", "group": "near", "kind": "synthetic", "synthetic_classes": [4, 5], "synthetic_count": 8, "synthetic_image_size": 64},
                  {"name": "empty", "group": "far", "kind": "synthetic", "synthetic_count": 8, "synthetic_image_size": 64}],
        backbone={"model": "RN-tiny", "image_size": 64},
        negatives={"corpus": "word_list", "word_list": words, "count": 4},
        collector={"kind": "id_train", "per_label": 2, "pool": {"name": "pool", "kind": "synthetic",
                   "synthetic_classes": [0, 1, 2, 3, 4, 5], "synthetic_count": 12, "synthetic_image_size": 64}},
        training={"epochs": 2, "batch_size": 8},
        cache_dir=tmp_path / "cache", data_dir=tmp_path / "data", device=device, **overrides,
    )  # fmt: skip


def test_lapt_trains_reports_ood_metrics_and_resumes_exactly(tmp_path):
    config = _trial(tmp_path, "lapt")
    history = list(run_ood_epochs(config))
    metrics = history[-1][0]
    assert [m["epoch"] for m, _ in history] == [1, 2]
    for name in ("auroc", "auroc.near", "auroc.far", "fpr95_id_pos.near", "fpr95_ood_pos", "aupr_in.empty", "id_accuracy"):
        assert 0.0 <= metrics[name] <= 100.0, name
    assert metrics["num_negative_labels"] == 4 and metrics["trainable_params"] == 2 * 2 * 64
    resumed = list(run_ood_epochs(config, history[0][1]))
    assert [m["epoch"] for m, _ in resumed] == [2]
    for name, value in history[-1][1]["prompts"].items():
        torch.testing.assert_close(resumed[-1][1]["prompts"][name], value)
    assert resumed[-1][0]["auroc"] == pytest.approx(metrics["auroc"])
    # The mined list is cached, and the cache is what a second trial reads.
    assert len(list((tmp_path / "cache" / "negatives").glob("*.json"))) == 1


@pytest.mark.parametrize("variant", ["neglabel", "zero_shot"])
def test_untuned_variants_evaluate_once(tmp_path, variant):
    (metrics, state), = list(run_ood_epochs(_trial(tmp_path, variant)))
    assert metrics["epoch"] == 1 and metrics["trainable_params"] == 0 and "prompts" not in state
    assert 0.0 <= metrics["auroc"] <= 100.0


def test_training_negatives_are_the_farthest_in_proportion():
    mined = Words(nouns=["n1", "n2", "n3", "n4", "n5", "n6"], adjectives=["a1", "a2", "a3"])
    assert training_negatives(mined, None).tolist() == list(range(9))
    # 3 of 9: 2 nouns, 1 adjective, each pool's first (farthest) ones.
    assert [mined.all[i] for i in training_negatives(mined, 3).tolist()] == ["n1", "n2", "a1"]


def test_lapt_trains_on_a_subset_of_the_negative_labels(tmp_path):
    config = _trial(tmp_path, "lapt")
    config = config.model_copy(update={"negatives": config.negatives.model_copy(update={"train_count": 2})})
    (metrics, _), _ = list(run_ood_epochs(config))
    assert metrics["num_negative_labels"] == 4 and 0.0 <= metrics["auroc"] <= 100.0
