"""The frozen CLIP backbone: dense image features, the text encoder over prompt embeddings, the tokenizer.

`load(model, pretrained, image_size)` builds an open_clip model and wraps it in `FrozenCLIP`, which
exposes what the prompt setups need: per-location image features (DualCoOp's dense features, not the
pooled embedding) and a text encoder that takes token *embeddings*, so learned context vectors can
replace the placeholder tokens of a prompt.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import warnings
import zipfile
from pathlib import Path
from typing import Literal

import open_clip
import torch
from open_clip.factory import load_state_dict as read_open_clip_state_dict
from open_clip.model import resize_pos_embed, resize_text_pos_embed
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from torch import nn

from trainables.errors import UserInputError

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

RANDOM_INIT_SEED = 0
"""Seed of random-weight backbones: every trial process must build the same backbone, or the
cached features of one trial would be invalid for another."""

RANDOM_INIT_VERSION = 1
"""Bump when the random-weight initialisation below changes (it is part of the cache identity)."""


ATTNPOOL_POS_EMBED_KEY = "visual.attnpool.positional_embedding"

# Entries of OpenAI's TorchScript state dicts (and of traced open_clip models) that are not weights.
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
_NON_WEIGHT_KEYS = (*_OPENAI_EXTRA_KEYS, "attn_mask")

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


class FrozenCLIP(nn.Module):
    """An open_clip CLIP model, frozen (no gradients into it, always in eval mode).

    Setups hold it as a plain attribute, so it is not part of their parameters or state dict.
    """

    def __init__(
        self,
        model: open_clip.CLIP,
        model_name: str,
        image_size: int,
        identity: str,
        quick_gelu: bool = False,
        quick_gelu_reason: str = "",
    ):
        super().__init__()
        self.model = model
        self.model_name = model_name
        self.image_size = image_size
        self.identity = identity
        """Stable key of (model, weights, activation, image size) for the feature cache."""
        self.quick_gelu = quick_gelu
        """Whether the transformers use QuickGELU (else GELU), and `quick_gelu_reason` why."""
        self.quick_gelu_reason = quick_gelu_reason
        self._tokenizer = open_clip.get_tokenizer(model_name)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FrozenCLIP":
        """Always eval: the backbone's BatchNorm statistics and dropout stay frozen (as DualCoOp)."""
        return super().train(False)

    # -- sizes ------------------------------------------------------------------------------

    @property
    def embed_dim(self) -> int:
        """d: the joint image-text feature dimension."""
        return self.model.visual.output_dim

    @property
    def text_width(self) -> int:
        """Width of the text transformer (the size of one token embedding)."""
        return self.model.token_embedding.embedding_dim

    @property
    def logit_scale(self) -> float:
        """The learned temperature exp(logit_scale) of the weights (OpenAI's: 100; random weights: 1/0.07)."""
        return float(self.model.logit_scale.exp())

    @property
    def device(self) -> torch.device:
        return self.model.token_embedding.weight.device

    @property
    def context_length(self) -> int:
        return self.model.context_length

    @property
    def is_resnet(self) -> bool:
        return isinstance(self.model.visual, ModifiedResNet)

    @property
    def dense_shape(self) -> tuple[int, int]:
        """(L, d) of `encode_dense` at this backbone's image size."""
        if self.is_resnet:
            return self.model.visual.attnpool.positional_embedding.shape[0], self.embed_dim
        grid_h, grid_w = self.model.visual.grid_size
        return grid_h * grid_w, self.embed_dim

    # -- images -----------------------------------------------------------------------------

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unnormalised global image embeddings [B, d] of images [B, 3, S, S]: CLIP's own image
        feature (the attention pool's output, or the class token through `ln_post` and `proj`)."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"images are {tuple(images.shape[-2:])} but backbone {self.identity} expects {self.image_size}px"
            )
        return self.model.encode_image(images.to(self.model.visual.conv1.weight.dtype))

    @torch.no_grad()
    def encode_dense(self, images: torch.Tensor) -> torch.Tensor:
        """Unnormalised per-location features [B, L, d] of images [B, 3, S, S].

        ModifiedResNet: DualCoOp's `ModifiedResNet_conv_proj`: the trunk without pooling, tokens
        `[mean_hw(x); x_1..x_hw]` plus the attention pool's positional embedding, then per token
        `c_proj(v_proj(token))`; L = HW + 1 with the mean token first. ViT: the patch tokens (class
        token dropped) through `ln_post` and `proj`; L = HW.
        """
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"images are {tuple(images.shape[-2:])} but backbone {self.identity} expects {self.image_size}px"
            )
        if self.is_resnet:
            return self._dense_resnet(images)
        return self._dense_vit(images)

    def _dense_resnet(self, images: torch.Tensor) -> torch.Tensor:
        visual = self.model.visual
        x = visual.stem(images.to(visual.conv1.weight.dtype))
        x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))
        tokens = x.flatten(2).transpose(1, 2)  # [B, HW, C]
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        tokens = tokens + visual.attnpool.positional_embedding.to(tokens.dtype)
        return visual.attnpool.c_proj(visual.attnpool.v_proj(tokens))

    def _dense_vit(self, images: torch.Tensor) -> torch.Tensor:
        visual = self.model.visual
        x = visual.conv1(images.to(visual.conv1.weight.dtype))  # [B, width, gh, gw]
        x = x.flatten(2).transpose(1, 2)  # [B, HW, width]
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        x = visual.ln_pre(visual.patch_dropout(x))
        x = visual.transformer(x)
        return visual.ln_post(x[:, 1:]) @ visual.proj

    # -- text -------------------------------------------------------------------------------

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids [n, context_length] (SOS ... EOT, zero padded), on the backbone's device."""
        return self._tokenizer(texts).to(self.device)

    def token_embedding(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings [n, T, width] of token ids [n, T]."""
        return self.model.token_embedding(token_ids)

    def encode_text(self, prompt_embeddings: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """EOT features [n, d] (text_projection applied, unnormalised) of prompt embeddings [n, T, width].

        CoOp's TextEncoder: add the positional embedding, run the transformer under the causal mask,
        `ln_final`, take the EOT token (the argmax of the ids) and project. T may be shorter than the
        context length: with a causal mask, tokens after the last EOT cannot change any EOT feature.
        """
        model = self.model
        length = token_ids.shape[1]
        x = prompt_embeddings + model.positional_embedding[:length].to(prompt_embeddings.dtype)
        mask = None if model.attn_mask is None else model.attn_mask[:length, :length]
        x = model.ln_final(model.transformer(x, attn_mask=mask))
        x = x[torch.arange(x.shape[0], device=x.device), token_ids.argmax(dim=-1)]
        if isinstance(model.text_projection, nn.Linear):
            return model.text_projection(x)
        return x @ model.text_projection


QuickGelu = Literal["auto"] | bool
"""`backbone.quick_gelu`: True for QuickGELU (x * sigmoid(1.702 x)), False for GELU, `auto` to
pick what the weights were trained with where that is knowable (`resolve_quick_gelu`)."""


def load(
    model: str,
    pretrained: str | None = None,
    image_size: int = 448,
    device: str = "cpu",
    quick_gelu: QuickGelu = "auto",
) -> FrozenCLIP:
    """Build the frozen backbone `model` at `image_size` px.

    `pretrained`: an open_clip tag (`openai`), a checkpoint file (open_clip or OpenAI state dict, or
    OpenAI's TorchScript archive), or None for random weights drawn with a fixed seed. A checkpoint
    whose attention-pool positional embedding was trained at another resolution is resized as
    DualCoOp does (row 0 kept, the spatial grid interpolated bicubically). `quick_gelu` chooses the
    transformers' activation (`resolve_quick_gelu`); the choice and its reason are on the result.
    """
    check_model(model, image_size)
    checkpoint: Path | None = None
    tag_cfg: dict | None = None
    if pretrained is None:
        # The random draws follow the model config, our init and open_clip's init code (which may
        # change between its versions): a change to any of them must not reuse cached features.
        config_hash = hashlib.sha256(json.dumps(open_clip.get_model_config(model), sort_keys=True).encode()).hexdigest()[:12]
        weights = f"random-seed{RANDOM_INIT_SEED}-init{RANDOM_INIT_VERSION}-cfg{config_hash}-open_clip{open_clip.__version__}"
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

    with torch.random.fork_rng(devices=[]), _quiet_random_init_warning():
        torch.manual_seed(RANDOM_INIT_SEED)
        # `quick_gelu` as a model keyword overrides the config's either way (force_quick_gelu only turns it on).
        clip_model = open_clip.create_model(
            model, pretrained=None, force_image_size=image_size, quick_gelu=use_quick_gelu, device="cpu"
        )
        if checkpoint is None and isinstance(clip_model.visual, ModifiedResNet):
            _init_random_resnet_trunk(clip_model.visual)
    if state_dict is not None:
        _load_weights(clip_model, state_dict, checkpoint)
    _sequence_first_text_transformer(clip_model)
    identity = f"{model}/{weights}@{image_size}"
    return FrozenCLIP(clip_model, model, image_size, identity, use_quick_gelu, reason).to(device)


def _sequence_first_text_transformer(clip_model: open_clip.CLIP) -> None:
    """Run the text transformer sequence-first ([L, N, E], as OpenAI's CLIP does); same features.

    open_clip runs it batch-first, and then `nn.MultiheadAttention` transposes its input to
    [L, N, E] and applies its in-projection to that non-contiguous tensor, which PyTorch computes as
    a batched matmul against L copies of the [3E, E] weight. Sequence-first, open_clip makes the
    input contiguous once and every projection is one matrix product: measured on RN101's text
    encoder (80 prompts, 2 CPU threads, bf16), a PositiveCoOp step went from 1.18 s to 0.58 s.
    """
    transformer = clip_model.transformer
    if not all(isinstance(block.attn, nn.MultiheadAttention) for block in transformer.resblocks):
        return  # open_clip's own attention (qk-norm, scaled-cosine models) expects batch-first input
    transformer.batch_first = False
    for block in transformer.resblocks:
        block.attn.batch_first = False


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
    config_default = bool(open_clip.get_model_config(model).get("quick_gelu", False))
    if config_default:
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


def resolve_device(name: str) -> torch.device:
    """`auto`: the GPU when there is one, else the CPU; any other name as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """`cuda:0 (NVIDIA H200)` or `cpu`: what a trial ran on, for its run."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def supported_models() -> list[str]:
    """open_clip model names with a ModifiedResNet or standard ViT image tower and the built-in text tower."""
    return [name for name in open_clip.list_models() if _unsupported_reason(open_clip.get_model_config(name)) is None]


# -- helpers ---------------------------------------------------------------------------------


class _RandomInitWarningFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init_warning():
    """Drop open_clip's "initialized randomly" warning: `load` always builds without weights, then
    loads them itself or keeps random ones on purpose (the identity says `random`)."""
    root, log_filter = logging.getLogger(), _RandomInitWarningFilter()
    root.addFilter(log_filter)
    try:
        yield
    finally:
        root.removeFilter(log_filter)


def _init_random_resnet_trunk(visual: ModifiedResNet) -> None:
    """Variance-preserving (Kaiming fan-in) convolutions for a random-weight ModifiedResNet.

    Under open_clip's random init (PyTorch's default conv init, BatchNorm at its eval statistics) the
    trunk output is ~30x smaller than the attention pool's positional embedding, so the dense
    features barely depend on the image (cosine 0.999 between two different images at the same
    location on RN-tiny); with Kaiming fan-in convolutions the trunk dominates and they do.
    """
    for module in visual.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")


def _unsupported_reason(cfg: dict) -> str | None:
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if vision.get("timm_model_name"):
        return "its image tower is a timm model"
    if text.get("hf_model_name") or cfg.get("custom_text") or "multimodal_cfg" in cfg:
        return "its text tower is not open_clip's built-in CLIP text transformer"
    if not isinstance(vision.get("layers"), list) and vision.get("attentional_pool"):
        return "its ViT uses an attentional pool"
    if text.get("pool_type", "argmax") != "argmax":
        return "its text features are not taken at the EOT (argmax) token"
    return None


def check_model(model: str, image_size: int) -> None:
    """Refuse, in one line, a model open_clip does not know or this project cannot use, or an image size
    that does not fit its stride."""
    cfg = open_clip.get_model_config(model)
    if cfg is None:
        examples = ["RN50", "RN101", "ViT-B-16", "ViT-B-32", "RN-tiny", "ViT-tiny"]
        raise UserInputError(
            f"unknown backbone model '{model}'; valid names include {', '.join(examples)} "
            f"({len(supported_models())} in all, see trainables.clip.supported_models())"
        )
    reason = _unsupported_reason(cfg)
    if reason is not None:
        raise UserInputError(f"backbone model '{model}' is not supported: {reason}")
    vision = cfg["vision_cfg"]
    stride = 32 if isinstance(vision.get("layers"), list) else vision["patch_size"]
    if image_size % stride:
        raise UserInputError(f"backbone.image_size {image_size} must be a multiple of {stride} for {model}")


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
