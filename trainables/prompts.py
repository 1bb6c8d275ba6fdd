"""CoOp prompt learning: learned context vectors in front of each class name, through the frozen text encoder.

As CoOp's (and DualCoOp's `MLCPromptLearner`) PromptLearner / TextEncoder split: the learner owns the
context vectors and the fixed token embeddings around them; `FrozenCLIP.encode_text` is the text
encoder. Prompts are kept only up to the longest EOT token: under the causal mask the padding after
it cannot change any EOT feature, so encoding the truncated prompts gives the same class features at
a fraction of the cost (77 -> ~20 tokens for COCO's class names).
"""

from __future__ import annotations

import torch
from torch import nn

from trainables.backbone.runtime import FrozenCLIP
from trainables.errors import UserInputError

DEFAULT_N_CTX = 16
"""DualCoOp's `N_CTX_POS = N_CTX_NEG = 16`."""

CTX_INIT_STD = 0.02
"""CoOp / DualCoOp initialise random context vectors from N(0, 0.02^2)."""

PLACEHOLDER = "X"
"""The token whose embeddings the context vectors replace (CoOp's `"X " * n_ctx`)."""


class PromptLearner(nn.Module):
    """Learnable context vectors for the prompts `[SOS] ctx_1..ctx_n {classname}. [EOS]`.

    `csc=True`: class-specific contexts [K, n_ctx, width]; False: one context [n_ctx, width] shared
    by all classes. `ctx_init` ("a photo of a") initialises the context from those words' token
    embeddings, and n_ctx becomes their number of tokens; otherwise N(0, 0.02^2) with n_ctx = 16.
    """

    def __init__(
        self,
        classnames: list[str],
        clip: FrozenCLIP,
        n_ctx: int | None = None,
        csc: bool = True,
        ctx_init: str | None = None,
    ):
        super().__init__()
        if not classnames:
            raise UserInputError("a prompt learner needs at least one class name")
        # The backbone is a plain attribute, not a submodule: the learner's parameters and state
        # dict are only its context vectors.
        self.__dict__["clip"] = clip
        self.csc = csc
        width = clip.text_width
        num_classes = len(classnames)

        if ctx_init is not None:
            init_words = ctx_init.replace("_", " ").strip()
            init_ids = clip.tokenize([init_words])
            # Tokens between SOS and EOT: counted as BPE tokens, not words, so a multi-token word
            # cannot shift the class name into the context slots.
            init_tokens = int(init_ids.argmax(dim=-1)) - 1
            if init_tokens < 1:
                raise UserInputError(f"setup option ctx_init '{ctx_init}' has no words")
            if n_ctx is not None and n_ctx != init_tokens:
                raise UserInputError(
                    f"setup options n_ctx={n_ctx} and ctx_init '{ctx_init}' ({init_tokens} tokens) disagree; give one"
                )
            self.n_ctx = init_tokens
            with torch.no_grad():
                ctx = clip.token_embedding(init_ids)[0, 1 : 1 + init_tokens].clone()
            if csc:
                ctx = ctx.unsqueeze(0).repeat(num_classes, 1, 1)
            prompt_prefix = init_words
        else:
            self.n_ctx = DEFAULT_N_CTX if n_ctx is None else n_ctx
            if self.n_ctx < 1:
                raise UserInputError(f"setup option n_ctx must be at least 1, got {self.n_ctx}")
            shape = (num_classes, self.n_ctx, width) if csc else (self.n_ctx, width)
            ctx = torch.empty(shape)
            nn.init.normal_(ctx, std=CTX_INIT_STD)  # by the CPU generator: a seed starts alike on every device
            ctx = ctx.to(clip.device)
            prompt_prefix = " ".join([PLACEHOLDER] * self.n_ctx)
        self.ctx = nn.Parameter(ctx)

        self.prompts = [f"{prompt_prefix} {name.replace('_', ' ')}." for name in classnames]
        """The prompt texts, the context words standing for the learned vectors."""
        token_ids = clip.tokenize(self.prompts)
        length = int(token_ids.argmax(dim=-1).max()) + 1  # through the longest prompt's EOT
        token_ids = token_ids[:, :length]
        with torch.no_grad():
            embeddings = clip.token_embedding(token_ids)
        # Fixed parts, rebuilt from the class names and the backbone: not saved in the state dict.
        self.register_buffer("token_ids", token_ids, persistent=False)
        self.register_buffer("token_prefix", embeddings[:, :1].clone(), persistent=False)  # SOS
        self.register_buffer("token_suffix", embeddings[:, 1 + self.n_ctx :].clone(), persistent=False)

    @property
    def num_classes(self) -> int:
        return self.token_ids.shape[0]

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt embeddings [K, T, width], token ids [K, T]), T = through the longest EOT."""
        ctx = self.ctx if self.csc else self.ctx.unsqueeze(0).expand(self.num_classes, -1, -1)
        prefix, suffix = self.token_prefix, self.token_suffix
        embeddings = torch.cat([prefix.to(ctx.dtype), ctx, suffix.to(ctx.dtype)], dim=1)
        return embeddings, self.token_ids

    def encode(self) -> torch.Tensor:
        """Text features [K, d] of the K prompts (unnormalised): the CoOp TextEncoder's output."""
        return self.clip.encode_text(*self())
