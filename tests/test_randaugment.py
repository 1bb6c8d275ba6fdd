"""The reference's RandAugment, written here, against PyPI's `randaugment` 1.0.2 itself (a test-only
dependency, imported with NumPy's removed `np.int` put back): every operation at every level and
sign, pixel for pixel on the same image with the same draws; and the policy's frequencies."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from trainables.data import randaugment as ours

PACKAGE_NAMES = {
    "invert": "Invert", "cutout": "Cutout", "sharpness": "Sharpness", "autocontrast": "AutoContrast",
    "posterize": "Posterize", "shear_x": "ShearX", "translate_x": "TranslateX", "translate_y": "TranslateY",
    "shear_y": "ShearY", "rotate": "Rotate", "equalize": "Equalize", "contrast": "Contrast", "color": "Color",
    "solarize": "Solarize", "brightness": "Brightness",
}  # fmt: skip


@pytest.fixture(scope="module")
def package():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(np, "int", int, raising=False)  # the package's ranges use np.int, gone since NumPy 1.24
        module = pytest.importorskip("randaugment.randaugment")
        yield module, patch


def _image() -> Image.Image:
    """37 x 29 (not square: width and height cannot be swapped unseen), gradients and noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:29, 0:37]
    pixels = np.stack([x * 6, y * 8, (x + y) * 3], axis=-1) + rng.integers(0, 60, (29, 37, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def test_the_package_lists_the_same_operations(package):
    module, _ = package
    assert [PACKAGE_NAMES[name] for name in ours.OPERATIONS] == module.RandAugment.get_trans_list()


@pytest.mark.parametrize("operation", ours.OPERATIONS)
def test_every_operation_at_every_level_and_sign_is_the_packages(package, operation):
    module, patch = package
    image = _image()
    signs = (1, -1) if operation in ours.SIGNED else (1,)
    centres = [(0, 0), (36, 28), (18, 3), (2, 27)] if operation == "cutout" else [(0, 0)]
    for level, sign, centre in itertools.product(ours.LEVELS, signs, centres):
        patch.setattr(module.random, "choice", lambda options: sign)
        draws = iter(centre)  # the package draws the x (its "height_loc") first, then the y
        patch.setattr(module.np.random, "randint", lambda low, high: next(draws))
        name = PACKAGE_NAMES[operation]
        expected = module.SubPolicy(1.0, name, level, 0.0, name, level)(image)  # the first slot always, the second never
        got = ours.apply(image, operation, level, sign, centre)
        assert got.mode == "RGB" and got.size == image.size
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected), err_msg=f"{operation} level {level} sign {sign} {centre}")


def test_the_magnitudes_are_autoaugments_bins():
    assert [ours.magnitude("posterize", level) for level in ours.LEVELS] == [8, 7, 7, 6, 6, 5, 5, 4, 4]
    assert [ours.magnitude("cutout", level) for level in ours.LEVELS] == [2, 4, 7, 9, 11, 13, 16, 18, 20]
    assert ours.magnitude("rotate", 9) == 30.0 and ours.magnitude("solarize", 9) == 0.0
    assert ours.magnitude("translate_x", 9) == pytest.approx(150 / 331)


def test_each_slot_fires_half_the_time_with_every_operation_and_level_equally_often():
    torch.manual_seed(0)
    policy, draws = ours.ReferenceRandAugment(), 40_000
    chosen = [policy.choose() for _ in range(draws)]
    fired = [choice for choices in chosen for choice in choices]
    # Two slots at p = 0.5: 2 x 40,000 x 0.5 = 40,000 expected, sd 141.
    assert abs(len(fired) - draws) < 5 * 141
    assert abs(sum(len(c) == 0 for c in chosen) / draws - 0.25) < 0.01  # no operation on a quarter of the images
    for values, options in (([c.operation for c in fired], ours.OPERATIONS), ([c.level for c in fired], list(ours.LEVELS))):
        counts = np.array([values.count(option) for option in options])
        expected = len(fired) / len(options)
        assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected)), counts


def test_a_seeded_image_gets_the_same_augmentation():
    image, policy = _image(), ours.ReferenceRandAugment()
    outputs = []
    for _ in range(2):
        torch.manual_seed(11)
        outputs.append(np.asarray(policy(image)))
    np.testing.assert_array_equal(*outputs)


# -- features.augmentation -------------------------------------------------------------------------


def test_the_augmentation_setting_changes_a_trials_key_only_where_it_augments(make_spec):
    from orchestrator.families.mlr.trials import make_trial
    from orchestrator.specs import grid

    def key(**features) -> str:
        spec = make_spec(features=features)
        return make_trial(spec, grid.cells(spec)[0], {}, 1).trial_key

    # `cached` augments nothing: the setting is not in its trials' configs, and their keys are as before it.
    spec = make_spec(features={"mode": "cached"})
    assert "augmentation" not in make_trial(spec, grid.cells(spec)[0], {}, 1).trial_config["features"]
    assert key(mode="cached") == key(mode="cached", augmentation="torchvision")
    # torchvision's is what augmented trials computed before the setting: their keys stay.
    for mode in ({"mode": "online"}, {"mode": "cached_views", "views": 2}):
        assert key(**mode, augmentation="torchvision") != key(**mode)  # the reference's is another augmentation
    old_online = grid.config_hash({**_trial_config(make_spec, "online"), "features": {"mode": "online", "views": 1, "device_memory": None}})
    assert old_online == grid.config_hash(_trial_config(make_spec, "online", augmentation="torchvision"))


def _trial_config(make_spec, mode: str, **features) -> dict:
    from orchestrator.families.mlr.trials import make_trial
    from orchestrator.specs import grid

    spec = make_spec(features={"mode": mode, **features})
    return make_trial(spec, grid.cells(spec)[0], {}, 1).trial_config


def test_the_reference_transform_is_the_trains_default():
    from trainables import data

    assert "ReferenceRandAugment" in repr(data.train_transform(64))
    assert "RandAugment(num_ops=2" in repr(data.train_transform(64, augmentation="torchvision"))
