"""The contrastively pre-trained tiny CLIP: cached checkpoint, loadable weights, learning, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from trainables import data
from trainables.backbone import load_clip, pretrain, resolve_pretrained
from trainables.config import BackboneConfig, DatasetConfig
from trainables.errors import UserInputError

# Small enough for a test: RN-tiny at 64 px, 8 steps of 8 images (a pool of 64 rendered images).
TINY = {"model": "RN-tiny", "image_size": 64}
RECIPE = {"steps": 8, "batch_size": 8}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return pretrain.synthetic_clip_checkpoint(**TINY, data_dir=tmp_path_factory.mktemp("data"), **RECIPE)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value for key, value in model.state_dict().items() if key != "attn_mask"}


def test_checkpoint_is_named_by_model_and_recipe_and_trained_once(checkpoint, monkeypatch):
    assert checkpoint.parent.name == "pretrained"
    assert checkpoint.name.startswith("RN-tiny-shapes-") and checkpoint.suffix == ".pt"
    modified = checkpoint.stat().st_mtime_ns

    def must_not_train(*args, **kwargs):
        raise AssertionError("the existing checkpoint was trained again")

    monkeypatch.setattr(pretrain, "train_synthetic_clip", must_not_train)
    again = pretrain.synthetic_clip_checkpoint(**TINY, data_dir=checkpoint.parent.parent, **RECIPE)
    assert again == checkpoint and checkpoint.stat().st_mtime_ns == modified
    # Another recipe is another file, so it is trained (and here refused).
    with pytest.raises(AssertionError, match="trained again"):
        pretrain.synthetic_clip_checkpoint(**TINY, data_dir=checkpoint.parent.parent, steps=9, batch_size=8)


def test_checkpoint_loads_into_the_backbone_with_the_trained_weights(checkpoint):
    trained, _ = pretrain.train_synthetic_clip(**TINY, **RECIPE)
    loaded = load_clip("RN-tiny", pretrained=str(checkpoint), image_size=64)
    random = load_clip("RN-tiny", pretrained=None, image_size=64)
    expected, got, initial = _weights(trained), _weights(loaded.model), _weights(random.model)
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)
    # The attention pool and the text tower trained; the ResNet trunk kept its random init.
    for key in ("visual.attnpool.v_proj.weight", "visual.attnpool.c_proj.weight", "token_embedding.weight", "text_projection"):
        assert not torch.equal(got[key], initial[key]), key
    torch.testing.assert_close(got["visual.conv1.weight"], initial["visual.conv1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(got["visual.layer4.0.conv2.weight"], initial["visual.layer4.0.conv2.weight"], rtol=0, atol=0)


def test_sidecar_records_the_recipe_and_every_steps_loss(checkpoint):
    sidecar = json.loads(checkpoint.with_suffix(".json").read_text())
    assert sidecar["model"] == "RN-tiny" and sidecar["image_size"] == 64 and sidecar["steps"] == RECIPE["steps"]
    assert len(sidecar["losses"]) == RECIPE["steps"] and all(np.isfinite(sidecar["losses"]))


def test_contrastive_loss_falls_below_chance(monkeypatch):
    # A pool of one batch, seen every step: the loss must fall below log(batch), the InfoNCE of
    # image-text similarities that carry no information (uniform over the batch).
    monkeypatch.setattr(pretrain, "POOL_SIZE", 16)
    _, losses = pretrain.train_synthetic_clip("RN-tiny", 64, steps=30, batch_size=16)
    assert len(losses) == 30
    assert np.mean(losses[-3:]) < 0.9 * np.log(16) < losses[0]


def test_same_arguments_give_identical_weights_in_another_folder(checkpoint, tmp_path):
    other = pretrain.synthetic_clip_checkpoint(**TINY, data_dir=tmp_path, **RECIPE)
    assert other.name == checkpoint.name and other != checkpoint
    first, second = torch.load(checkpoint, weights_only=True), torch.load(other, weights_only=True)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_captions_list_the_present_classes_with_articles():
    names = ["circle", "square", "octagon", "star"]
    present = np.array([True, False, True, True])
    rng = np.random.default_rng(0)
    for _ in range(20):
        text = pretrain.caption(names, present, rng)
        assert text.endswith(".")
        for article_and_name in ("a circle", "an octagon", "a star"):
            assert text.count(article_and_name) == 1, text
        assert "square" not in text
        assert text.count(",") == 1 and text.count(" and ") == 1, text
    assert pretrain.caption(names, np.array([False, True, False, False]), rng).count("a square") == 1


def test_pretraining_images_are_not_the_demo_datasets(tmp_path):
    images, labels = pretrain.render_pool(8, 8, seed=0)
    demo = DatasetConfig(name="shapes", kind="synthetic", synthetic_num_train=8, synthetic_num_test=8)
    for split in ("train", "test"):
        ds = data.build_dataset(demo, split, tmp_path)
        demo_images = [np.asarray(ds.load_image(i)) for i in range(len(ds))]
        assert not any(np.array_equal(mine, theirs) for mine in images for theirs in demo_images)
    assert labels.shape == (8, 8) and (labels.sum(axis=1) >= 1).all() and (labels.sum(axis=1) <= 4).all()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [({"steps": 0}, "steps"), ({"batch_size": 1}, "batch_size"), ({"num_classes": 17}, "num_classes")],
)
def test_bad_arguments_are_user_errors(tmp_path, arguments, message):
    with pytest.raises(UserInputError, match=message):
        pretrain.synthetic_clip_checkpoint(**TINY, data_dir=tmp_path, **{**RECIPE, **arguments})


def test_vit_trains_its_whole_image_tower(tmp_path):
    path = pretrain.synthetic_clip_checkpoint("ViT-tiny", 64, tmp_path, steps=2, batch_size=4)
    loaded = _weights(load_clip("ViT-tiny", pretrained=str(path), image_size=64).model)
    initial = _weights(load_clip("ViT-tiny", pretrained=None, image_size=64).model)
    for key in ("visual.conv1.weight", "visual.transformer.resblocks.0.attn.in_proj_weight", "visual.proj"):
        assert not torch.equal(loaded[key], initial[key]), key


def test_resolve_pretrained_maps_only_the_reserved_value(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(
        pretrain, "synthetic_clip_checkpoint",
        lambda model, size, data_dir, negation_rate, **_: calls.append((model, size, data_dir, negation_rate)) or tmp_path / "x.pt",
    )  # fmt: skip
    assert resolve_pretrained(BackboneConfig(model="RN101", pretrained="openai"), tmp_path) == "openai"
    assert resolve_pretrained(BackboneConfig(model="RN101", pretrained=None), tmp_path) is None
    backbone = BackboneConfig(model="RN-tiny", pretrained="synthetic", image_size=128, synthetic_negation_rate=0.05)
    resolved = resolve_pretrained(backbone, tmp_path)
    assert resolved == str(tmp_path / "x.pt") and calls == [("RN-tiny", 128, tmp_path, 0.05)]


def test_a_trial_on_synthetic_weights_reports_its_checkpoint_and_recipe(checkpoint, tmp_path, monkeypatch):
    """What MLflow gets as `resolved.backbone.synthetic_*`: the file the trial loaded and what trained it."""
    from trainables.mlr.config import TrialConfig
    from trainables.mlr.train import run_epochs

    monkeypatch.setattr(pretrain, "synthetic_clip_checkpoint", lambda *args, **kwargs: checkpoint)
    config = TrialConfig(
        setup="baseline",
        dataset=DatasetConfig(name="shapes", kind="synthetic", synthetic_num_train=16, synthetic_num_test=8),
        backbone={**TINY, "pretrained": "synthetic"},
        training={"epochs": 1, "batch_size": 8, "warmup_epochs": 0},
        label_ratio=0.5, seed=1, cache_dir=tmp_path / "cache", data_dir=tmp_path / "data", device="cpu",
    )  # fmt: skip
    (metrics, _), *_ = run_epochs(config)
    resolved = metrics["resolved"]
    assert resolved["backbone.synthetic_checkpoint"] == checkpoint.name
    sidecar = json.loads(checkpoint.with_suffix(".json").read_text())
    recipe = resolved["backbone.synthetic_recipe"]
    assert recipe == {key: value for key, value in sidecar.items() if key not in ("losses", "train_seconds")}
    assert (recipe["steps"], recipe["batch_size"], recipe["model"]) == (RECIPE["steps"], RECIPE["batch_size"], "RN-tiny")
