"""What every setup shares: the module API, option validation, and the prompt-setup logits."""

from __future__ import annotations

from abc import ABC, abstractmethod

import pydantic
import torch
import torch.nn.functional as F
from torch import nn

from trainables.backbone.runtime import FrozenCLIP
from trainables.errors import UserInputError
from trainables.mlr.setups.aggregation import (
    PAPER_TEMPERATURE,
    Aggregation,
    LogitScale,
    region_logits,
)


class SetupOptions(pydantic.BaseModel):
    """Base of each setup's options: unknown options are errors."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def parse(cls, setup_name: str, options: dict) -> "SetupOptions":
        """Validate `options`, raising UserInputError with one line naming the problem."""
        valid = ", ".join(cls.model_fields) or "none"
        try:
            return cls(**options)
        except pydantic.ValidationError as error:
            unknown = [str(e["loc"][0]) for e in error.errors() if e["type"] == "extra_forbidden"]
            if unknown:
                raise UserInputError(
                    f"unknown option(s) {', '.join(unknown)} for setup '{setup_name}'; valid options: {valid}"
                ) from None
            first = error.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            raise UserInputError(f"setup '{setup_name}' option {field}: {first['msg']}") from None


class MLRSetup(nn.Module, ABC):
    """A multi-label recognition head on the frozen CLIP backbone.

    `forward(x)` takes images [B, 3, S, S] (encoded by the backbone without gradients) or dense
    features [B, L, d] and returns logits [B, K, 2]: [..., 0] presence, [..., 1] absence.
    """

    Options: type[SetupOptions] = SetupOptions
    lr_groups: tuple[str, ...] = ()
    """The names of `parameter_groups()`, known without building the setup (specs validate and
    search learning rates by them)."""

    def __init__(self, classnames: list[str], clip: FrozenCLIP):
        super().__init__()
        if not classnames:
            raise UserInputError("a setup needs at least one class name")
        # A plain attribute, not a submodule: parameters() and state_dict() are only what is learned.
        self.__dict__["clip"] = clip
        self.classnames = list(classnames)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def dense_features(self, x: torch.Tensor) -> torch.Tensor:
        """Dense features [B, L, d] of images [B, 3, S, S], or `x` itself when it already is features."""
        if x.dim() == 4:
            return self.clip.encode_dense(x)
        if x.dim() == 3 and x.shape[-1] == self.clip.embed_dim:
            return x
        raise ValueError(
            f"expected images [B,3,S,S] or dense features [B,L,{self.clip.embed_dim}], got shape {tuple(x.shape)}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(self.dense_features(x), self.class_embeddings())

    @abstractmethod
    def class_embeddings(self) -> torch.Tensor | None:
        """Unit class embeddings [K, 2, d] (presence at index PRESENCE = 0), or None for a setup without any."""

    @abstractmethod
    def logits_from_features(self, features: torch.Tensor, class_embeddings: torch.Tensor | None) -> torch.Tensor:
        """Logits [B, K, 2] of dense features [B, L, d], given `class_embeddings()` computed once."""

    @abstractmethod
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by learning-rate group (`prompt`, `embedding`, `projector`)."""


class PromptOptions(SetupOptions):
    """Options of every prompt setup."""

    n_ctx: int | None = pydantic.Field(None, ge=1)
    """Context vectors per prompt; default 16 (DualCoOp), or the token count of a context init."""
    csc: bool = True
    """Class-specific contexts (DualCoOp's `--csc`); False shares one context across classes."""
    aggregation: Aggregation = "paper"
    """Spatial softmax weights: `paper` (each map its own) or `reference` (the presence map's, as the code)."""
    logit_scale: LogitScale = "paper"
    """The temperature of the logits: `paper` multiplies the cosines by 100 (DualCoOp's hard-coded
    20 x 5, OpenAI CLIP's learned temperature); `backbone` by the backbone's own learned
    exp(logit_scale), the scale its cosines were trained at. The two agree on OpenAI's weights
    (exactly 100); a CLIP trained to another temperature (the demo's tiny CLIP: about 16) saturates
    the 2-way softmax at 100, where ASL gives the saturated entries no gradient."""


class PromptSetup(MLRSetup):
    """Setups scoring regions against a presence and an absence embedding per class (section 3.1 aggregation)."""

    def __init__(self, classnames: list[str], clip: FrozenCLIP, options: PromptOptions):
        super().__init__(classnames, clip)
        self.aggregation = options.aggregation
        self.temperature = clip.logit_scale if options.logit_scale == "backbone" else PAPER_TEMPERATURE

    @abstractmethod
    def presence_absence(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised presence and absence embeddings, each [K, d]."""

    def class_embeddings(self) -> torch.Tensor:
        presence, absence = self.presence_absence()
        return F.normalize(torch.stack([presence, absence], dim=1), dim=-1)

    def logits_from_features(self, features: torch.Tensor, class_embeddings: torch.Tensor | None) -> torch.Tensor:
        return region_logits(features, class_embeddings, self.aggregation, self.temperature)
