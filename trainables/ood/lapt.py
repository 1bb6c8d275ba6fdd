"""LAPT's distribution-aware prompts (Zhang et al., ECCV 2024) and the hand-crafted text features around them.

Two learned contexts, one shared by the ID labels and one shared by the negative labels (the
released `dis_aware` prompt type, CSC off): `[SOS] ctx_1..ctx_n {label}. [EOS]`, through the
frozen text encoder (the CoOp `PromptLearner` of the MLR setups, truncated after the longest EOT).
Logits are the backbone's temperature (100 for OpenAI's CLIP) times the cosine of the image
embedding with each label's text embedding.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from trainables import atomic
from trainables.backbone.runtime import FrozenCLIP
from trainables.ood import negatives
from trainables.ood.negatives import Words
from trainables.prompts import PromptLearner

TIP_TEMPLATES = (
    "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
    "a {} in a video game.", "art of the {}.", "a photo of the small {}.",
)  # fmt: skip
"""The seven hand-crafted templates of TIP-Adapter, LAPT's frozen text features for cross-modal mixing."""

ZERO_SHOT_TEMPLATE = "a photo of a {}."

ENCODE_BATCH = 1024


@torch.no_grad()
def encode_prompts(clip: FrozenCLIP, prompts: list[str], batch_size: int = ENCODE_BATCH) -> torch.Tensor:
    """Unit text features [N, d] of plain prompts, each batch truncated after its longest EOT."""
    features = []
    for start in range(0, len(prompts), batch_size):
        ids = clip.tokenize(prompts[start : start + batch_size]).to(clip.device)
        ids = ids[:, : int(ids.argmax(dim=-1).max()) + 1]
        features.append(F.normalize(clip.encode_text(clip.token_embedding(ids), ids).float(), dim=-1))
    return torch.cat(features)


def mine_negative_labels(
    clip: FrozenCLIP, id_names: list[str], words: Words, count: int, percentile: float, cache_dir: Path | None = None
) -> Words:
    """The mined negative labels (`negatives.mine` over every candidate's prompt feature), cached as
    JSON under `cache_dir/negatives/` by (backbone, weights, ID names, corpus, M, percentile)."""
    pool = negatives.candidates(words, id_names)
    key = negatives.mining_key(clip.identity, id_names, pool, count, percentile)
    path = None if cache_dir is None else Path(cache_dir) / "negatives" / f"{key}.json"
    if path is not None and path.is_file():
        stored = json.loads(path.read_text())
        return Words(stored["nouns"], stored["adjectives"])
    id_features = encode_prompts(clip, [negatives.ID_TEMPLATE.format(n.replace("_", " ")) for n in id_names])
    noun_features = encode_prompts(clip, [negatives.NOUN_TEMPLATE.format(w) for w in pool.nouns])
    adjective_features = encode_prompts(clip, [negatives.ADJECTIVE_TEMPLATE.format(w) for w in pool.adjectives])
    mined = negatives.mine(pool, noun_features, adjective_features, id_features, count, percentile)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        stored = json.dumps({"nouns": mined.nouns, "adjectives": mined.adjectives, "key": key}, indent=1)
        atomic.replace(path, lambda temporary: temporary.write_text(stored))
    return mined


def handcrafted_label_features(clip: FrozenCLIP, id_names: list[str], negative_labels: Words) -> torch.Tensor:
    """NegLabel's untuned text features [K + M, d]: "The nice {}." for ID names and nouns,
    "This is a {} photo." for adjectives."""
    id_prompts = [negatives.ID_TEMPLATE.format(n.replace("_", " ")) for n in id_names]
    return encode_prompts(clip, id_prompts + negative_labels.prompts())


def template_features(clip: FrozenCLIP, labels: list[str]) -> torch.Tensor:
    """Frozen features [L, 7, d] of every label under the TIP templates (cross-modal mixing)."""
    prompts = [template.format(label.replace("_", " ")) for label in labels for template in TIP_TEMPLATES]
    return encode_prompts(clip, prompts).view(len(labels), len(TIP_TEMPLATES), -1)


class LAPTPrompts(nn.Module):
    """Learned ID and negative-label contexts; `text_features()` gives the unit label features."""

    lr_groups = ("prompt",)

    def __init__(self, id_names: list[str], negative_names: list[str], clip: FrozenCLIP, n_ctx: int):
        super().__init__()
        self.__dict__["clip"] = clip  # the frozen backbone is not a submodule (CoOp's split)
        self.num_id = len(id_names)
        self.id_prompt = PromptLearner(id_names, clip, n_ctx=n_ctx, csc=False)
        self.negative_prompt = PromptLearner(negative_names, clip, n_ctx=n_ctx, csc=False)

    def text_features(self, negative_rows: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        """Unit features [K + m, d]: the ID labels, then the negative labels at `negative_rows`."""
        embeddings, ids = self.negative_prompt()
        negative = self.clip.encode_text(embeddings[negative_rows], ids[negative_rows])
        return F.normalize(torch.cat([self.id_prompt.encode(), negative]).float(), dim=-1)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"prompt": [self.id_prompt.ctx, self.negative_prompt.ctx]}
