"""A backbone's weights: an open_clip tag, a checkpoint file, random, or `synthetic`.

`load_clip(model, pretrained, image_size)` builds the architecture (`trainables.backbone.runtime.build`), loads the
weights (resizing position embeddings trained at another resolution), picks the activation, and
returns the frozen runtime (`trainables.backbone.runtime.FrozenCLIP`) under an identity that keys the feature
cache. `load_backbone(config.backbone, data_dir, device)` is a trial's entry: its config may also
name `synthetic`, the tiny CLIP pre-trained on generated shapes (`trainables.backbone.pretrain`), trained on
first use and then read from its file like any checkpoint.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import warnings
import zipfile
from pathlib import Path
from typing import Literal

import open_clip
import torch
import torch.nn.functional as F
from open_clip.factory import load_state_dict as read_open_clip_state_dict
from open_clip.model import resize_pos_embed, resize_text_pos_embed
from open_clip.modified_resnet import ModifiedResNet

from trainables.backbone import pretrain, runtime
from trainables.config import BackboneConfig
from trainables.errors import UserInputError

ATTNPOOL_POS_EMBED_KEY = "visual.attnpool.positional_embedding"

# Entries of OpenAI's TorchScript state dicts (and of traced open_clip models) that are not weights.
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
_NON_WEIGHT_KEYS = (*_OPENAI_EXTRA_KEYS, "attn_mask")

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")

QuickGelu = Literal["auto"] | bool
"""`backbone.quick_gelu`: True for QuickGELU (x * sigmoid(1.702 x)), False for GELU, `auto` to
pick what the weights were trained with where that is knowable (`resolve_quick_gelu`)."""


def load_clip(
    model: str,
    pretrained: str | None = None,
    image_size: int = 448,
    device: str = "cpu",
    quick_gelu: QuickGelu = "auto",
) -> runtime.FrozenCLIP:
    """Build the frozen backbone `model` at `image_size` px.

    `pretrained`: an open_clip tag (`openai`), a checkpoint file (open_clip or OpenAI state dict, or
    OpenAI's TorchScript archive), or None for random weights drawn with a fixed seed. A checkpoint
    whose attention-pool positional embedding was trained at another resolution is resized as
    DualCoOp does (row 0 kept, the spatial grid interpolated bicubically). `quick_gelu` chooses the
    transformers' activation (`resolve_quick_gelu`); the choice and its reason are on the result.
    """
    runtime.check_model(model, image_size)
    checkpoint: Path | None = None
    tag_cfg: dict | None = None
    if pretrained is None:
        # The random draws follow the model config, our init and open_clip's init code (which may
        # change between its versions): a change to any of them must not reuse cached features.
        config_hash = hashlib.sha256(json.dumps(open_clip.get_model_config(model), sort_keys=True).encode()).hexdigest()[:12]
        weights = f"random-seed{runtime.RANDOM_INIT_SEED}-init{runtime.RANDOM_INIT_VERSION}-cfg{config_hash}-open_clip{open_clip.__version__}"
    elif _looks_like_path(pretrained):
        checkpoint = Path(pretrained).expanduser()
        if not checkpoint.is_file():
            raise UserInputError(f"backbone checkpoint file not found: {checkpoint}")
        weights = f"sha256-{_sha256(checkpoint.resolve(), checkpoint.stat().st_mtime_ns)}"
    else:
        tag_cfg = open_clip.get_pretrained_cfg(model, pretrained)
        if not tag_cfg:
            tags = open_clip.list_pretrained_tags_by_model(model)
            raise UserInputError(
                f"backbone.pretrained '{pretrained}' is neither a checkpoint file nor an open_clip tag of "
                f"{model} (tags: {', '.join(tags) or 'none'})"
            )
        checkpoint = _fetch_tagged_weights(model, pretrained, tag_cfg)
        weights = pretrained
    state_dict = None if checkpoint is None else _read_checkpoint(checkpoint)
    use_quick_gelu, reason = resolve_quick_gelu(quick_gelu, model, tag_cfg, checkpoint, state_dict)
    if use_quick_gelu:
        weights += "+quickgelu"  # the activation changes every feature: part of the cache key

    clip_model = runtime.build(model, image_size, use_quick_gelu)
    if state_dict is not None:
        _load_weights(clip_model, state_dict, checkpoint)
    identity = f"{model}/{weights}@{image_size}"
    frozen = runtime.FrozenCLIP(clip_model, model, image_size, identity, use_quick_gelu, reason).to(device)
    if torch.device(device).type == "cuda":
        # cuDNN's fastest convolutions take NHWC; the weights are converted once, each batch by the first conv.
        frozen.model.visual.to(memory_format=torch.channels_last)
    return frozen


def resolve_quick_gelu(
    requested: QuickGelu,
    model: str,
    tag_cfg: dict | None = None,
    checkpoint: Path | None = None,
    state_dict: dict | None = None,
) -> tuple[bool, str]:
    """(QuickGELU or not, why) for `requested` True, False or `auto`.

    `auto` follows what the weights were trained with, where that is knowable: an open_clip tag
    says so; a `-quickgelu` model config says so; OpenAI's TorchScript archives, and state dicts
    that keep OpenAI's non-weight entries (`input_resolution`, ...), were trained with QuickGELU;
    a plain state dict of a model all of whose released open_clip weights use QuickGELU (RN50,
    RN101, ...) is taken to be one of them. Otherwise the model config's activation (GELU unless
    it says `quick_gelu`), which is also what random weights get.
    """
    if requested is not True and requested is not False and requested != "auto":
        raise UserInputError(f"backbone.quick_gelu must be auto, true or false, got {requested!r}")
    if requested != "auto":
        return requested, "set in the spec"
    if runtime.config_quick_gelu(model):
        return True, f"model config {model} uses QuickGELU"
    if tag_cfg is not None:
        return bool(tag_cfg.get("quick_gelu", False)), "the open_clip pretrained tag's activation"
    if checkpoint is None:
        return False, "random weights: the model config's GELU"
    if _is_torchscript(checkpoint):
        return True, "OpenAI TorchScript archive (trained with QuickGELU)"
    if state_dict is not None and any(key in state_dict for key in _OPENAI_EXTRA_KEYS):
        return True, "state dict in OpenAI's layout (trained with QuickGELU)"
    tags = open_clip.list_pretrained_tags_by_model(model)
    if tags and all(open_clip.get_pretrained_cfg(model, tag).get("quick_gelu", False) for tag in tags):
        return True, f"every released {model} weight set ({', '.join(tags)}) was trained with QuickGELU"
    return False, "not knowable from the file: the model config's GELU (set backbone.quick_gelu if the weights used QuickGELU)"


SYNTHETIC_WEIGHTS = "synthetic"
"""The `backbone.pretrained` value that names the checkpoint pre-trained on shapes (`trainables.backbone.pretrain`), trained on first use."""


def resolve_pretrained(backbone: BackboneConfig, data_dir: Path) -> str | None:
    """`backbone.pretrained` as `load_clip` takes it.

    The reserved value `synthetic` becomes the path of the contrastively pre-trained checkpoint
    under `data_dir` (trained now if no process has yet); any other value is returned unchanged.
    """
    if backbone.pretrained != SYNTHETIC_WEIGHTS:
        return backbone.pretrained
    return str(
        pretrain.synthetic_clip_checkpoint(
            backbone.model, backbone.image_size, data_dir, seed=backbone.synthetic_seed,
            negation_rate=backbone.synthetic_negation_rate, progress=True,
        )
    )


def recipe_of(checkpoint: Path) -> dict:
    """The recipe a `synthetic_clip_checkpoint` was trained with, from its sidecar (without the
    per-step losses and the training time, which are its outcome)."""
    sidecar = json.loads(Path(checkpoint).with_suffix(".json").read_text())
    return {key: value for key, value in sidecar.items() if key not in ("losses", "train_seconds")}


def load_backbone(backbone: BackboneConfig, data_dir: Path, device: torch.device) -> runtime.FrozenCLIP:
    """The frozen backbone a trial config names, with `synthetic` weights trained first if needed."""
    pretrained = resolve_pretrained(backbone, data_dir)
    return load_clip(backbone.model, pretrained, backbone.image_size, device=str(device), quick_gelu=backbone.quick_gelu)


# -- helpers ---------------------------------------------------------------------------------


def _looks_like_path(pretrained: str) -> bool:
    return "/" in pretrained or "\\" in pretrained or pretrained.endswith(_CHECKPOINT_SUFFIXES)


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files holding compiled code; `torch.save` files hold only data."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


@functools.lru_cache(maxsize=None)
def _sha256(path: Path, mtime_ns: int) -> str:
    """sha256 of the file bytes, computed once per (path, modification time) in a process."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch_tagged_weights(model: str, tag: str, tag_cfg: dict) -> Path:
    """The local file of an open_clip tag (from open_clip's cache, downloading it when not cached)."""
    try:
        return Path(open_clip.download_pretrained(tag_cfg))
    except Exception as error:  # hub, network and cache errors all mean: the weights are not available
        raise UserInputError(
            f"weights '{tag}' of backbone {model} are not available locally and could not be fetched: {error}"
        ) from error


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint file, OpenAI's non-weight entries included; one-line error if unreadable."""
    try:
        return _read_state_dict(path)
    except Exception as error:
        raise UserInputError(f"cannot read backbone checkpoint {path}: {error}") from error


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if _is_torchscript(path):
        with warnings.catch_warnings():
            # torch deprecates TorchScript, but OpenAI's weights exist only in that format.
            warnings.simplefilter("ignore", FutureWarning)
            state_dict = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        state_dict = read_open_clip_state_dict(str(path), device="cpu", weights_only=True)
    return dict(state_dict)


def resize_attnpool_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """DualCoOp's resize of the attention-pool positional embedding [1 + g*g, C] to [1 + grid*grid, C].

    Row 0 (the mean token's) is kept; the g x g spatial part is interpolated bicubically
    (`F.interpolate(mode='bicubic')`, default align_corners) to grid x grid.
    """
    old_grid = math.isqrt(pos_embed.shape[0] - 1)
    channels = pos_embed.shape[1]
    spatial = pos_embed[1:].reshape(1, old_grid, old_grid, channels).permute(0, 3, 1, 2)
    spatial = F.interpolate(spatial.float(), size=(grid, grid), mode="bicubic").to(pos_embed.dtype)
    spatial = spatial.permute(0, 2, 3, 1).reshape(grid * grid, channels)
    return torch.cat([pos_embed[:1], spatial], dim=0)


def _load_weights(model: open_clip.CLIP, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    state_dict = {key: value for key, value in state_dict.items() if key not in _NON_WEIGHT_KEYS}
    pos_embed = state_dict.get(ATTNPOOL_POS_EMBED_KEY)
    if pos_embed is not None and isinstance(model.visual, ModifiedResNet):
        target_rows = model.visual.attnpool.positional_embedding.shape[0]
        if pos_embed.shape[0] != target_rows:
            state_dict[ATTNPOOL_POS_EMBED_KEY] = resize_attnpool_pos_embed(pos_embed, math.isqrt(target_rows - 1))
    # ViT grids and text lengths: open_clip's own resizing (bicubic with antialias, as open_clip).
    resize_pos_embed(state_dict, model)
    resize_text_pos_embed(state_dict, model)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()
        raise UserInputError(
            f"backbone checkpoint {path} does not match model architecture: {' '.join(first_line[:3])}"
        ) from error
