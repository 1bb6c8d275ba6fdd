"""The frozen backbone: dense features, text encoder, checkpoint loading, identity."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys

import open_clip
import pytest
import torch
import torch.nn.functional as F

from trainables.backbone import load_clip, runtime
from trainables.backbone.weights import resize_attnpool_pos_embed, resolve_quick_gelu
from trainables.errors import UserInputError


def _images(n: int = 2, size: int = 128, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _perturbed_state_dict(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The model's weights plus noise, so a loaded checkpoint cannot equal a fresh seed-0 build by chance."""
    generator = torch.Generator().manual_seed(seed)
    return {
        key: value + 0.01 * torch.randn(value.shape, generator=generator) if value.is_floating_point() else value
        for key, value in model.state_dict().items()
    }


# -- dense features ----------------------------------------------------------------------------


def test_resnet_dense_features_follow_dualcoop_step_by_step(tiny_rn):
    visual = tiny_rn.model.visual
    images = _images()
    with torch.no_grad():
        # The stem written out: three conv-bn-relu, then 2x2 average pooling.
        x = images
        for conv, bn in [(visual.conv1, visual.bn1), (visual.conv2, visual.bn2), (visual.conv3, visual.bn3)]:
            x = F.conv2d(x, conv.weight, stride=conv.stride, padding=conv.padding)
            x = F.relu(F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps))
        x = F.avg_pool2d(x, 2)
        for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
            x = layer(x)
        batch, channels, height, width = x.shape
        spatial = x.reshape(batch, channels, height * width).permute(2, 0, 1)  # (HW, B, C) as CLIP's attnpool
        tokens = torch.cat([spatial.mean(dim=0, keepdim=True), spatial], dim=0)
        tokens = tokens + visual.attnpool.positional_embedding[:, None, :]
        pool = visual.attnpool
        value = tokens @ pool.v_proj.weight.T + pool.v_proj.bias
        expected = (value @ pool.c_proj.weight.T + pool.c_proj.bias).permute(1, 0, 2)

    dense = tiny_rn.encode_dense(images)
    assert height * width == (128 // 32) ** 2
    assert dense.shape == (2, height * width + 1, tiny_rn.embed_dim) == (2, *tiny_rn.dense_shape)
    torch.testing.assert_close(dense, expected, atol=1e-5, rtol=1e-5)


def test_resnet_token_zero_is_the_spatial_mean_before_projection(tiny_rn):
    """v_proj and c_proj are affine, f(t) = A t + c; token 0 is f(mean_l x_l + p_0) and token l is f(x_l + p_l).

    So token_0 - A p_0 must equal mean_l (token_l - A p_l).
    """
    pool = tiny_rn.model.visual.attnpool
    A = pool.c_proj.weight @ pool.v_proj.weight
    positional = pool.positional_embedding.detach() @ A.T  # [L, d]
    dense = tiny_rn.encode_dense(_images(seed=3)).double()
    without_position = dense - positional.double()
    torch.testing.assert_close(without_position[:, 0], without_position[:, 1:].mean(dim=1), atol=1e-4, rtol=1e-4)


def test_vit_dense_features_are_open_clips_patch_tokens(tiny_vit):
    """open_clip's own ViT with output_tokens returns ln_post(patch tokens); projected, they are ours."""
    visual = copy.deepcopy(tiny_vit.model.visual)
    visual.output_tokens = True
    images = _images(seed=1)
    with torch.no_grad():
        _, tokens = visual(images)
    dense = tiny_vit.encode_dense(images)
    grid = 128 // 16
    assert dense.shape == (2, grid * grid, tiny_vit.embed_dim) == (2, *tiny_vit.dense_shape)
    torch.testing.assert_close(dense, tokens @ visual.proj, atol=1e-5, rtol=1e-5)


def test_random_resnet_dense_features_depend_on_the_image(tiny_rn):
    """Under open_clip's own random init the attention pool's positional embedding swamps the trunk
    (same-location cosine 0.999 between different images); the variance-preserving init must not."""
    generator = torch.Generator().manual_seed(4)
    colour_blocks = torch.rand(2, 3, 4, 4, generator=generator) * 4 - 2
    images = F.interpolate(colour_blocks, size=(128, 128), mode="nearest")
    dense = F.normalize(tiny_rn.encode_dense(images), dim=-1)
    same_location_cosine = (dense[0] * dense[1]).sum(dim=-1).mean()
    assert same_location_cosine < 0.97


def test_dense_features_reject_images_of_another_size(tiny_rn):
    with pytest.raises(ValueError, match="expects 128px"):
        tiny_rn.encode_dense(_images(size=160))


# -- frozen --------------------------------------------------------------------------------------


def test_backbone_is_frozen_and_stays_in_eval_mode(tiny_rn):
    assert not any(p.requires_grad for p in tiny_rn.parameters())
    tiny_rn.train()
    assert not any(module.training for module in tiny_rn.modules())
    assert not tiny_rn.encode_dense(_images(n=1)).requires_grad


# -- text ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["tiny_rn", "tiny_vit"])
def test_text_encoder_equals_open_clip_encode_text(backbone, request):
    frozen = request.getfixturevalue(backbone)
    texts = ["a photo of a dog.", "X X X X traffic light.", "an extraordinarily long caption " * 5]
    token_ids = open_clip.get_tokenizer(frozen.model_name)(texts)
    assert torch.equal(frozen.tokenize(texts), token_ids)
    with torch.no_grad():
        expected = frozen.model.encode_text(token_ids)
    encoded = frozen.encode_text(frozen.token_embedding(token_ids), token_ids)
    assert encoded.shape == (3, frozen.embed_dim)
    torch.testing.assert_close(encoded, expected, atol=1e-5, rtol=1e-5)


def test_text_encoder_passes_gradients_to_prompt_embeddings_only(tiny_rn):
    token_ids = tiny_rn.tokenize(["a photo of a cat."])
    embeddings = tiny_rn.token_embedding(token_ids).clone().requires_grad_(True)
    tiny_rn.encode_text(embeddings, token_ids).sum().backward()
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_rn.parameters())


# -- loading -------------------------------------------------------------------------------------


def test_random_backbones_are_reproducible_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    first = load_clip("ViT-tiny", None, image_size=64)
    assert torch.equal(torch.rand(3), expected_draw)
    second = load_clip("ViT-tiny", None, image_size=64)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
    assert first.identity == second.identity
    assert first.identity.startswith("ViT-tiny/random-seed0-init") and first.identity.endswith(f"-open_clip{open_clip.__version__}@64")
    assert load_clip("ViT-tiny", None, image_size=128).identity != first.identity


def test_random_identity_changes_with_the_model_config(tmp_path):
    # Cached features are keyed by the identity: editing a config must not reuse stale features.
    config = json.loads((runtime.MODEL_CONFIG_DIR / "ViT-tiny.json").read_text())
    config["vision_cfg"]["layers"] = 1
    (tmp_path / "ViT-tiny-edited.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path)
    original = load_clip("ViT-tiny", None, image_size=64)
    edited = load_clip("ViT-tiny-edited", None, image_size=64)
    assert original.identity.split("/")[1].split("-cfg")[1] != edited.identity.split("/")[1].split("-cfg")[1]


def test_random_backbones_are_identical_across_processes():
    checksum = "sum(float(v.double().abs().sum()) for v in load_clip('ViT-tiny', None, image_size=64).state_dict().values())"
    script = f"from trainables.backbone import load_clip; print(repr({checksum}))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    here = sum(float(v.double().abs().sum()) for v in load_clip("ViT-tiny", None, image_size=64).state_dict().values())
    assert float(result.stdout.strip().splitlines()[-1]) == here


def test_checkpoint_at_another_size_gets_a_bicubically_resized_attnpool_embedding(tmp_path):
    source = open_clip.create_model("RN-tiny", pretrained=None, force_image_size=128)
    weights = _perturbed_state_dict(source, seed=7)
    path = tmp_path / "rn_tiny_128.pt"
    torch.save(weights, path)

    loaded = load_clip("RN-tiny", str(path), image_size=192)

    old = weights["visual.attnpool.positional_embedding"]  # [1 + 4*4, C]
    channels = old.shape[1]
    grid = old[1:].reshape(1, 4, 4, channels).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)
    expected = torch.cat([old[:1], resized.permute(0, 2, 3, 1).reshape(36, channels)])
    new = loaded.model.visual.attnpool.positional_embedding
    assert new.shape == (37, channels)
    torch.testing.assert_close(new, expected)
    assert torch.equal(new[0], old[0])
    for key, value in loaded.model.state_dict().items():
        if key != "visual.attnpool.positional_embedding":
            assert torch.equal(value, weights[key]), key
    assert loaded.encode_dense(_images(n=1, size=192)).shape == (1, 37, 64)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.identity == f"RN-tiny/sha256-{sha}@192"


def test_resize_of_a_constant_grid_is_constant():
    """Bicubic interpolation reproduces constants: a sanity check independent of F.interpolate."""
    pos = torch.cat([torch.full((1, 5), -1.0), torch.full((49, 5), 0.25)])
    resized = resize_attnpool_pos_embed(pos, 14)
    assert resized.shape == (197, 5)
    assert torch.equal(resized[0], pos[0])
    torch.testing.assert_close(resized[1:], torch.full((196, 5), 0.25))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::FutureWarning")
def test_torchscript_checkpoint_loads_with_quick_gelu(tmp_path):
    source = open_clip.create_model("RN-tiny", pretrained=None, force_image_size=128).eval()
    source.load_state_dict(_perturbed_state_dict(source, seed=11))
    path = tmp_path / "rn_tiny_openai_format.pt"
    # A TorchScript archive holding every weight, as OpenAI's released files (traced on the image tower only, for speed).
    traced = torch.jit.trace_module(source, {"encode_image": _images(n=1)})
    torch.jit.save(traced, str(path))

    loaded = load_clip("RN-tiny", str(path), image_size=128)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    # OpenAI's released (TorchScript) weights were trained with QuickGELU.
    activations = [type(m).__name__ for m in loaded.model.transformer.modules()]
    assert "QuickGELU" in activations and "GELU" not in activations


def test_checkpoint_of_another_architecture_is_a_user_error(tmp_path):
    path = tmp_path / "vit.pt"
    torch.save(open_clip.create_model("ViT-tiny", pretrained=None).state_dict(), path)
    with pytest.raises(UserInputError, match="does not match"):
        load_clip("RN-tiny", str(path), image_size=128)


@pytest.mark.parametrize(
    ("model", "pretrained", "image_size", "message"),
    [
        ("RN-nonexistent", None, 128, r"unknown backbone model 'RN-nonexistent'; valid names include RN50, RN101"),
        ("RN-tiny", "/no/such/dir/weights.pt", 128, r"not found: /no/such/dir/weights\.pt"),
        ("RN-tiny", "missing.pt", 128, r"not found: missing\.pt"),
        ("RN101", "no-such-tag", 224, r"'no-such-tag' is neither a checkpoint file nor an open_clip tag of RN101 \(tags: openai, yfcc15m\)"),
        ("RN-tiny", None, 100, r"image_size 100 must be a multiple of 32"),
        ("ViT-tiny", None, 120, r"image_size 120 must be a multiple of 16"),
        ("ViT-B-16-SigLIP", None, 224, r"not supported"),
    ],
)
def test_bad_backbone_input_is_a_user_error(model, pretrained, image_size, message):
    with pytest.raises(UserInputError, match=message) as error:
        load_clip(model, pretrained, image_size=image_size)
    assert "\n" not in str(error.value)


# -- the activation: QuickGELU or GELU -------------------------------------------------------------


def _activations(frozen: runtime.FrozenCLIP) -> set[str]:
    names = {type(m).__name__ for m in frozen.model.modules()}
    return names & {"QuickGELU", "GELU"}


def test_plain_state_dict_keeps_the_configs_gelu_unless_told(tmp_path):
    source = open_clip.create_model("RN-tiny", pretrained=None, force_image_size=128)
    path = tmp_path / "plain.pt"
    torch.save(_perturbed_state_dict(source, seed=3), path)
    auto = load_clip("RN-tiny", str(path), image_size=128)
    assert _activations(auto) == {"GELU"} and auto.quick_gelu is False
    assert "not knowable" in auto.quick_gelu_reason
    forced = load_clip("RN-tiny", str(path), image_size=128, quick_gelu=True)
    assert _activations(forced) == {"QuickGELU"} and forced.quick_gelu_reason == "set in the spec"
    # Same weights, another activation: other text features, and another cache identity.
    ids = auto.tokenize(["a photo of a circle."])
    assert not torch.allclose(auto.encode_text(auto.token_embedding(ids), ids), forced.encode_text(forced.token_embedding(ids), ids))
    assert forced.identity == auto.identity.replace("@128", "+quickgelu@128")


def test_state_dict_in_openai_layout_gets_quick_gelu(tmp_path):
    source = open_clip.create_model("RN-tiny", pretrained=None, force_image_size=128)
    weights = _perturbed_state_dict(source, seed=4)
    # What `torch.jit.load(openai_file).state_dict()` holds besides the weights.
    weights.update(input_resolution=torch.tensor(128), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    path = tmp_path / "openai_layout.pt"
    torch.save(weights, path)
    loaded = load_clip("RN-tiny", str(path), image_size=128)
    assert _activations(loaded) == {"QuickGELU"} and "OpenAI's layout" in loaded.quick_gelu_reason
    assert _activations(load_clip("RN-tiny", str(path), image_size=128, quick_gelu=False)) == {"GELU"}


@pytest.mark.parametrize(
    ("model", "tag", "expected", "why"),
    [
        ("RN101", "openai", True, "tag"),
        ("RN101", "yfcc15m", True, "tag"),
        ("ViT-B-32", "laion2b_s34b_b79k", False, "tag"),
        ("RN101-quickgelu", None, True, "model config"),
        ("RN101", None, True, "every released RN101 weight set"),  # a plain RN101 state dict
        ("ViT-B-32", None, False, "not knowable"),  # its released weights differ
    ],
)
def test_auto_follows_what_the_weights_were_trained_with(tmp_path, model, tag, expected, why):
    tag_cfg = open_clip.get_pretrained_cfg(model, tag) if tag else None
    plain = tmp_path / "weights.pt"
    torch.save({}, plain)
    checkpoint = None if tag else plain
    chosen, reason = resolve_quick_gelu("auto", model, tag_cfg, checkpoint, state_dict={} if checkpoint else None)
    assert chosen is expected and why in reason


def test_random_weights_use_the_model_configs_activation():
    assert _activations(load_clip("RN-tiny", None, image_size=64)) == {"GELU"}
    with pytest.raises(UserInputError, match="quick_gelu must be auto, true or false"):
        resolve_quick_gelu("yes", "RN-tiny")


def test_the_sequence_first_text_transformer_gives_open_clips_batch_first_features(tiny_rn):
    import copy

    assert tiny_rn.model.transformer.batch_first is False
    batch_first = copy.deepcopy(tiny_rn.model)
    batch_first.transformer.batch_first = True
    for block in batch_first.transformer.resblocks:
        block.attn.batch_first = True
    ids = tiny_rn.tokenize(["a photo of a circle.", "a star and a ring"])
    torch.testing.assert_close(tiny_rn.model.encode_text(ids), batch_first.encode_text(ids), atol=1e-5, rtol=1e-5)
