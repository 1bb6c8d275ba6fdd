"""The frozen CLIP backbone: dense image features, the text encoder over prompt embeddings, the tokenizer.

`FrozenCLIP` wraps an open_clip model (`build` makes its architecture, `trainables.backbone.weights` loads
its weights) and exposes what the prompt setups need: per-location image features (DualCoOp's dense features, not the pooled embedding) and a text
encoder that takes token *embeddings*, so learned context vectors can replace the placeholder tokens
of a prompt.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import open_clip
import torch
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


def build(model: str, image_size: int, quick_gelu: bool) -> open_clip.CLIP:
    """open_clip's `model` at `image_size` px with random weights drawn from `RANDOM_INIT_SEED` (the
    same in every process), its text transformer run sequence-first; `trainables.backbone.load_clip`
    then loads the weights, if any."""
    check_model(model, image_size)
    with torch.random.fork_rng(devices=[]), _quiet_random_init_warning():
        torch.manual_seed(RANDOM_INIT_SEED)
        # `quick_gelu` as a model keyword overrides the config's either way (force_quick_gelu only turns it on).
        clip_model = open_clip.create_model(
            model, pretrained=None, force_image_size=image_size, quick_gelu=quick_gelu, device="cpu"
        )
        if isinstance(clip_model.visual, ModifiedResNet):
            _init_random_resnet_trunk(clip_model.visual)
    _sequence_first_text_transformer(clip_model)
    return clip_model


def config_quick_gelu(model: str) -> bool:
    """Whether `model`'s config asks for QuickGELU (else GELU): the activation of random weights."""
    return bool(open_clip.get_model_config(model).get("quick_gelu", False))


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
            f"({len(supported_models())} in all, see trainables.backbone.runtime.supported_models())"
        )
    reason = _unsupported_reason(cfg)
    if reason is not None:
        raise UserInputError(f"backbone model '{model}' is not supported: {reason}")
    vision = cfg["vision_cfg"]
    stride = 32 if isinstance(vision.get("layers"), list) else vision["patch_size"]
    if image_size % stride:
        raise UserInputError(f"backbone.image_size {image_size} must be a multiple of {stride} for {model}")
