"""CoOp prompt learner: prompt layout, initialisation, truncation after the longest EOT."""

from __future__ import annotations

import open_clip
import pytest
import torch

from trainables.errors import UserInputError
from trainables.prompts import PromptLearner

CLASSNAMES = ["cat", "traffic light", "potted_plant", "hair drier"]


def _tokenize(frozen, texts: list[str]) -> torch.Tensor:
    """Full-length token ids [n, 77] from open_clip's tokenizer, independent of the learner."""
    return open_clip.get_tokenizer(frozen.model_name)(texts)


def _full_length_prompts(frozen, learner: PromptLearner, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The learner's prompts rebuilt at the full context length: token embeddings with the context spliced in."""
    token_ids = _tokenize(frozen, texts)
    embeddings = frozen.token_embedding(token_ids).detach().clone()
    ctx = learner.ctx if learner.csc else learner.ctx.expand(len(texts), -1, -1)
    embeddings[:, 1 : 1 + learner.n_ctx] = ctx
    return embeddings, token_ids


def test_prompt_layout_is_sos_context_classname_period_eos(tiny_rn):
    learner = PromptLearner(CLASSNAMES, tiny_rn, n_ctx=5)
    embeddings, token_ids = learner()
    texts = [f"X X X X X {name.replace('_', ' ')}." for name in CLASSNAMES]
    full_ids = _tokenize(tiny_rn, texts)
    eot = full_ids.argmax(dim=-1)
    length = int(eot.max()) + 1
    assert torch.equal(token_ids, full_ids[:, :length])
    assert token_ids.shape == (4, length) and int(token_ids[:, -1].max()) == 49407  # the longest ends at its EOT
    assert embeddings.shape == (4, length, tiny_rn.text_width)

    full_embeddings = tiny_rn.token_embedding(full_ids[:, :length])
    torch.testing.assert_close(embeddings[:, :1], full_embeddings[:, :1])  # SOS
    torch.testing.assert_close(embeddings[:, 1:6], learner.ctx)  # class-specific context
    torch.testing.assert_close(embeddings[:, 6:], full_embeddings[:, 6:])  # class tokens, ".", EOS, padding


def test_shared_context_is_the_same_for_every_class(tiny_rn):
    learner = PromptLearner(CLASSNAMES, tiny_rn, n_ctx=3, csc=False)
    assert learner.ctx.shape == (3, tiny_rn.text_width)
    embeddings, _ = learner()
    for k in range(len(CLASSNAMES)):
        assert torch.equal(embeddings[k, 1:4], learner.ctx)


def test_random_context_is_normal_with_std_002(tiny_rn):
    torch.manual_seed(0)
    ctx = PromptLearner(["a"] * 40, tiny_rn).ctx.detach()  # [40, 16, 64]: 40,960 draws
    assert ctx.shape == (40, 16, tiny_rn.text_width)
    assert abs(float(ctx.mean())) < 0.02 * 0.05
    assert abs(float(ctx.std()) - 0.02) < 0.02 * 0.03


def test_context_from_words_reproduces_clips_hand_written_prompt(tiny_rn):
    """Initialised from "a photo of a", the learner's prompts are exactly CLIP's prompts "a photo of a {name}."."""
    learner = PromptLearner(CLASSNAMES, tiny_rn, ctx_init="a photo of a")
    assert learner.n_ctx == 4 and learner.ctx.shape == (4, 4, tiny_rn.text_width)
    texts = [f"a photo of a {name.replace('_', ' ')}." for name in CLASSNAMES]
    with torch.no_grad():
        expected = tiny_rn.model.encode_text(_tokenize(tiny_rn, texts))
    torch.testing.assert_close(learner.encode(), expected, atol=1e-5, rtol=1e-5)


def test_shared_context_from_words(tiny_rn):
    learner = PromptLearner(CLASSNAMES, tiny_rn, ctx_init="a photo of a", csc=False)
    word_embeddings = tiny_rn.token_embedding(_tokenize(tiny_rn, ["a photo of a"]))[0, 1:5]
    torch.testing.assert_close(learner.ctx, word_embeddings)


@pytest.mark.parametrize("csc", [True, False])
@pytest.mark.parametrize("backbone", ["tiny_rn", "tiny_vit"])
def test_truncated_prompts_encode_like_full_length_prompts(backbone, csc, request):
    frozen = request.getfixturevalue(backbone)
    learner = PromptLearner(CLASSNAMES, frozen, n_ctx=16, csc=csc)
    texts = [" ".join(["X"] * 16) + f" {name.replace('_', ' ')}." for name in CLASSNAMES]
    full_embeddings, full_ids = _full_length_prompts(frozen, learner, texts)
    assert learner.token_ids.shape[1] < full_ids.shape[1] == 77
    torch.testing.assert_close(learner.encode(), frozen.encode_text(full_embeddings, full_ids), atol=1e-5, rtol=1e-5)


def test_only_the_context_is_learned_and_saved(tiny_rn):
    learner = PromptLearner(CLASSNAMES, tiny_rn, n_ctx=2)
    assert [name for name, _ in learner.named_parameters()] == ["ctx"]
    assert list(learner.state_dict()) == ["ctx"]
    learner.encode().sum().backward()
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_rn.parameters())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_ctx": 0}, "n_ctx must be at least 1"),
        ({"n_ctx": 3, "ctx_init": "a photo of a"}, r"n_ctx=3 and ctx_init 'a photo of a' \(4 tokens\) disagree"),
        ({"ctx_init": "   "}, "has no words"),
    ],
)
def test_bad_prompt_options_are_user_errors(tiny_rn, kwargs, message):
    with pytest.raises(UserInputError, match=message):
        PromptLearner(CLASSNAMES, tiny_rn, **kwargs)


def test_no_classes_is_a_user_error(tiny_rn):
    with pytest.raises(UserInputError, match="at least one class"):
        PromptLearner([], tiny_rn)
