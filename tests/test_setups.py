"""The four MLR setups: registry, shapes, aggregation formulas, gradients, parameter counts, training."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from trainables.backbone import load_clip, runtime
from trainables.errors import UserInputError
from trainables.mlr import setups
from trainables.mlr.losses import AsymmetricLoss
from trainables.mlr.setups import aggregation

CLASSNAMES = ["cat", "dog", "traffic light"]
PROMPT_SETUPS = ["positive_coop", "negative_coop", "dual_coop"]


def _images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 128, 128, generator=torch.Generator().manual_seed(seed))


def _build(name: str, frozen, seed: int = 0, **options):
    torch.manual_seed(seed)
    return setups.build(name, CLASSNAMES, frozen, **options)


# -- registry ------------------------------------------------------------------------------------


def test_registry_names():
    assert setups.names() == ["baseline", "positive_coop", "negative_coop", "dual_coop"]


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("coop", {}, r"unknown setup 'coop'; valid setups: baseline, positive_coop, negative_coop, dual_coop"),
        ("baseline", {"n_ctx": 4}, r"unknown option\(s\) n_ctx for setup 'baseline'; valid options: none"),
        ("dual_coop", {"ctx_init": "a photo"}, r"unknown option\(s\) ctx_init .* valid options: n_ctx, csc, aggregation, logit_scale, positive_ctx_init, negative_ctx_init"),
        ("positive_coop", {"aggregation": "mean"}, r"setup 'positive_coop' option aggregation: Input should be 'paper' or 'reference'"),
        ("negative_coop", {"n_ctx": 0}, r"setup 'negative_coop' option n_ctx: .*greater than or equal to 1"),
        ("positive_coop", {"embedding_init": "zeros"}, r"option embedding_init"),
    ],
)
def test_bad_setup_input_is_a_user_error(tiny_rn, name, options, message):
    with pytest.raises(UserInputError, match=message) as error:
        setups.build(name, CLASSNAMES, tiny_rn, **options)
    assert "\n" not in str(error.value)


def test_setups_hold_the_backbone_outside_their_parameters(tiny_rn):
    setup = _build("dual_coop", tiny_rn)
    assert setup.clip is tiny_rn
    assert not any(key.startswith(("clip", "model")) for key in setup.state_dict())
    assert setups.count_trainable(setup) == sum(p.numel() for p in setup.parameters()) == 2 * 3 * 16 * 64
    setup.train()
    assert not tiny_rn.training and not any(m.training for m in tiny_rn.modules())


# -- shapes: images and features give the same logits ---------------------------------------------------


@pytest.mark.parametrize("backbone", ["tiny_rn", "tiny_vit"])
@pytest.mark.parametrize("name", setups.names())
def test_logits_from_images_equal_logits_from_features(backbone, name, request):
    frozen = request.getfixturevalue(backbone)
    setup = _build(name, frozen)
    images = _images(n=3)
    features = frozen.encode_dense(images)
    from_images = setup(images)
    assert from_images.shape == (3, len(CLASSNAMES), 2)
    torch.testing.assert_close(setup(features), from_images, rtol=0, atol=0)
    with torch.no_grad():
        embeddings = setup.class_embeddings()
        torch.testing.assert_close(setup.logits_from_features(features, embeddings), from_images, rtol=0, atol=0)
    if name == "baseline":
        assert embeddings is None
    else:
        assert embeddings.shape == (len(CLASSNAMES), 2, frozen.embed_dim)
        torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(len(CLASSNAMES), 2))


def test_input_of_the_wrong_shape_is_rejected(tiny_rn):
    with pytest.raises(ValueError, match=r"dense features \[B,L,64\]"):
        _build("baseline", tiny_rn)(torch.randn(2, 17, 32))


# -- class embeddings: which side is prompted ----------------------------------------------------------


def test_positive_coop_prompts_presence_and_learns_absence(tiny_rn):
    setup = _build("positive_coop", tiny_rn)
    embeddings = setup.class_embeddings()
    torch.testing.assert_close(embeddings[:, 0], F.normalize(setup.prompt_learner.encode(), dim=-1))
    torch.testing.assert_close(embeddings[:, 1], F.normalize(setup.learned_embedding, dim=-1))


def test_negative_coop_prompts_absence_and_learns_presence(tiny_rn):
    setup = _build("negative_coop", tiny_rn)
    embeddings = setup.class_embeddings()
    torch.testing.assert_close(embeddings[:, 0], F.normalize(setup.learned_embedding, dim=-1))
    torch.testing.assert_close(embeddings[:, 1], F.normalize(setup.prompt_learner.encode(), dim=-1))


def test_dual_coop_prompts_both_sides(tiny_rn):
    setup = _build("dual_coop", tiny_rn)
    embeddings = setup.class_embeddings()
    torch.testing.assert_close(embeddings[:, 0], F.normalize(setup.positive_prompt.encode(), dim=-1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(embeddings[:, 1], F.normalize(setup.negative_prompt.encode(), dim=-1), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(embeddings[:, 0], embeddings[:, 1])


def test_dual_coop_with_prompts_of_different_lengths(tiny_rn):
    setup = _build("dual_coop", tiny_rn, positive_ctx_init="a photo of a", negative_ctx_init="a photo without any")
    assert setup.positive_prompt.n_ctx == 4 and setup.negative_prompt.n_ctx == 4
    setup = _build("dual_coop", tiny_rn, positive_ctx_init="a photo of a", negative_ctx_init="no")
    embeddings = setup.class_embeddings()
    torch.testing.assert_close(embeddings[:, 1], F.normalize(setup.negative_prompt.encode(), dim=-1))


def test_text_residual_is_added_before_normalisation(tiny_rn):
    setup = _build("positive_coop", tiny_rn, text_residual=True)
    embeddings = setup.class_embeddings()
    expected = F.normalize(setup.prompt_learner.encode() + setup.text_residual, dim=-1)
    torch.testing.assert_close(embeddings[:, 0], expected)
    assert [p.shape for p in setup.parameter_groups()["embedding"]] == [(3, 64), (3, 64)]


def test_learned_embeddings_start_standard_normal(tiny_rn):
    torch.manual_seed(0)
    setup = setups.build("positive_coop", [f"c{i}" for i in range(100)], tiny_rn)
    values = setup.learned_embedding.detach()  # [100, 64]
    assert abs(float(values.mean())) < 0.03 and abs(float(values.std()) - 1.0) < 0.03


# -- aggregation: the formulas written out ----------------------------------------------------------------


def _explicit_region_logits(features, embeddings, weights_from_presence: bool, temperature: float = 100.0) -> torch.Tensor:
    """Section 3.1 with explicit sums over locations: S = 20 cos, A = exp(S_l) / sum_l' exp(S_l'),
    logit = 5 sum_l A_l S_l at the paper's temperature 100, (temperature / 20) sum_l A_l S_l at another."""
    batch, locations, _ = features.shape
    classes = embeddings.shape[0]
    out = torch.zeros(batch, classes, 2, dtype=torch.float64)
    for b in range(batch):
        for k in range(classes):
            scores = {}
            for c in (0, 1):
                scores[c] = []
                for l in range(locations):
                    f, e = features[b, l].double(), embeddings[k, c].double()
                    scores[c].append(20.0 * float(f @ e) / (math.sqrt(float(f @ f)) * math.sqrt(float(e @ e))))
            for c in (0, 1):
                weight_scores = scores[0] if weights_from_presence else scores[c]
                normaliser = sum(math.exp(s) for s in weight_scores)
                out[b, k, c] = temperature / 20.0 * sum(math.exp(w) / normaliser * s for w, s in zip(weight_scores, scores[c]))
    return out


@pytest.mark.parametrize(("option", "weights_from_presence"), [("paper", False), ("reference", True)])
def test_region_aggregation_matches_the_formulas(option, weights_from_presence):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 5, 8, generator=generator)
    embeddings = F.normalize(torch.randn(3, 2, 8, generator=generator), dim=-1)
    logits = aggregation.region_logits(features, embeddings, option)
    expected = _explicit_region_logits(features, embeddings, weights_from_presence)
    torch.testing.assert_close(logits.double(), expected, atol=1e-4, rtol=1e-5)


def test_the_two_aggregations_differ_only_on_the_absence_side():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(2, 5, 8, generator=generator)
    embeddings = F.normalize(torch.randn(3, 2, 8, generator=generator), dim=-1)
    paper = aggregation.region_logits(features, embeddings, "paper")
    reference = aggregation.region_logits(features, embeddings, "reference")
    torch.testing.assert_close(paper[..., 0], reference[..., 0])
    assert (paper[..., 1] - reference[..., 1]).abs().max() > 1e-3


@pytest.mark.parametrize(("option", "weights_from_presence"), [("paper", False), ("reference", True)])
@pytest.mark.parametrize("name", PROMPT_SETUPS)
def test_prompt_setups_aggregate_with_the_chosen_formula(tiny_rn, name, option, weights_from_presence):
    setup = _build(name, tiny_rn, aggregation=option)
    features = tiny_rn.encode_dense(_images(n=2))
    with torch.no_grad():
        embeddings = setup.class_embeddings()
        logits = setup(features)
    expected = _explicit_region_logits(features, embeddings, weights_from_presence)
    torch.testing.assert_close(logits.double(), expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("name", PROMPT_SETUPS)
def test_backbone_logit_scale_uses_the_backbones_learned_temperature(tiny_rn, name):
    # Random weights keep CLIP's initial temperature 1/0.07; the spatial weights stay softmax(20 cos).
    assert tiny_rn.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)
    setup = _build(name, tiny_rn, logit_scale="backbone")
    features = tiny_rn.encode_dense(_images(n=2))
    with torch.no_grad():
        embeddings, logits = setup.class_embeddings(), setup(features)
    expected = _explicit_region_logits(features, embeddings, weights_from_presence=False, temperature=1 / 0.07)
    torch.testing.assert_close(logits.double(), expected, atol=1e-4, rtol=1e-5)


def test_backbone_logit_scale_is_the_paper_scale_on_a_backbone_trained_at_100(tiny_rn):
    # OpenAI's CLIP weights end training at exp(logit_scale) = 100, where both options agree.
    trained_at_100 = copy.deepcopy(tiny_rn)
    trained_at_100.model.logit_scale.fill_(math.log(100.0))
    features = tiny_rn.encode_dense(_images(n=2))
    paper = _build("dual_coop", trained_at_100)(features)
    backbone = _build("dual_coop", trained_at_100, logit_scale="backbone")(features)
    torch.testing.assert_close(backbone, paper)


def test_baseline_projects_unnormalised_features_and_pools_each_map_by_its_own_softmax(tiny_rn):
    setup = _build("baseline", tiny_rn)
    features = tiny_rn.encode_dense(_images(n=2)).double()
    weight, bias = (p.detach().double() for p in setup.projector.parameters())
    classes = len(CLASSNAMES)
    expected = torch.zeros(2, classes, 2, dtype=torch.float64)
    for b in range(2):
        # a(h, w) = Phi(z(h, w)) in R^{K x 2}: output unit 2k + c is class k, side c (0 presence, 1 absence).
        local = [weight @ features[b, l] + bias for l in range(features.shape[1])]
        for k in range(classes):
            for c in (0, 1):
                scores = [float(a[2 * k + c]) for a in local]
                normaliser = sum(math.exp(s) for s in scores)
                expected[b, k, c] = 5.0 * sum(math.exp(s) / normaliser * s for s in scores)
    with torch.no_grad():
        logits = setup(features.float())
    torch.testing.assert_close(logits.double(), expected, atol=1e-4, rtol=1e-5)


def test_autocast_bf16_is_accepted(tiny_rn):
    setup = _build("positive_coop", tiny_rn)
    features = tiny_rn.encode_dense(_images(n=2))
    with torch.no_grad():
        full = setup(features)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = setup(features)
    torch.testing.assert_close(low.float(), full, atol=0.5, rtol=0.02)


# -- gradients -------------------------------------------------------------------------------------


EXPECTED_GROUPS = {
    "baseline": {"projector": ["projector.weight", "projector.bias"]},
    "positive_coop": {"prompt": ["prompt_learner.ctx"], "embedding": ["learned_embedding"]},
    "negative_coop": {"prompt": ["prompt_learner.ctx"], "embedding": ["learned_embedding"]},
    "dual_coop": {"prompt": ["positive_prompt.ctx", "negative_prompt.ctx"]},
}


@pytest.mark.parametrize("name", setups.names())
def test_gradients_reach_every_group_and_never_the_backbone(tiny_rn, name):
    setup = _build(name, tiny_rn)
    groups = setup.parameter_groups()
    names_by_id = {id(p): n for n, p in setup.named_parameters()}
    assert {g: [names_by_id[id(p)] for p in params] for g, params in groups.items()} == EXPECTED_GROUPS[name]
    assert sorted(names_by_id.values()) == sorted(n for names in EXPECTED_GROUPS[name].values() for n in names)
    assert setups.lr_groups(name) == tuple(EXPECTED_GROUPS[name])  # declared without building

    logits = setup(_images(n=2))
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(5))
    (logits * weights).sum().backward()
    for group, params in groups.items():
        for param in params:
            assert param.grad is not None and param.grad.abs().sum() > 0, (group, names_by_id[id(param)])
    assert all(p.grad is None for p in tiny_rn.parameters())


def test_text_residual_gets_gradients(tiny_rn):
    setup = _build("negative_coop", tiny_rn, text_residual=True)
    setup(_images(n=1)).sum().backward()
    assert setup.text_residual.grad is not None and setup.text_residual.grad.abs().sum() > 0


# -- a few SGD steps lower the loss --------------------------------------------------------------------


# Small steps: with logits up to 100 (the scales 20 and 5) and a summed loss, the gradients of a
# random tiny backbone are large; these rates lower the loss steadily on both tiny backbones.
LEARNING_RATES = {"prompt": 1e-6, "embedding": 1e-3, "projector": 1e-4}


@pytest.mark.parametrize("backbone", ["tiny_rn", "tiny_vit"])
@pytest.mark.parametrize("name", setups.names())
def test_sgd_steps_lower_the_loss(backbone, name, request):
    frozen = request.getfixturevalue(backbone)
    setup = _build(name, frozen)
    features = frozen.encode_dense(_images(n=8, seed=2))
    targets = torch.randint(-1, 2, (8, len(CLASSNAMES)), generator=torch.Generator().manual_seed(3))
    loss_fn = AsymmetricLoss()
    optimizer = torch.optim.SGD(
        [{"params": params, "lr": LEARNING_RATES[group]} for group, params in setup.parameter_groups().items()]
    )
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = loss_fn(setup(features), targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = float(loss_fn(setup(features), targets))
    assert final < 0.97 * losses[0], losses + [final]


# -- parameter counts (PositiveCoOp paper Table 1: RN101, d = 512, n_ctx = 16, csc) ----------------------


@pytest.fixture(scope="module")
def rn101() -> runtime.FrozenCLIP:
    return load_clip("RN101", None, image_size=224)


@pytest.mark.parametrize(
    ("num_classes", "expected"),
    [
        (80, {"baseline": 82_080, "positive_coop": 696_320, "negative_coop": 696_320, "dual_coop": 1_310_720}),
        (20, {"baseline": 20_520, "positive_coop": 174_080, "negative_coop": 174_080, "dual_coop": 327_680}),
    ],
)
def test_trainable_parameter_counts_on_rn101(rn101, num_classes, expected):
    classnames = [f"class {i}" for i in range(num_classes)]
    counts = {name: setups.count_trainable(setups.build(name, classnames, rn101)) for name in setups.names()}
    assert counts == expected
    # The counts written as formulas: Linear(d, 2K); K * n_ctx * width + K * d; 2 * K * n_ctx * width.
    d, width, n_ctx, k = 512, 512, 16, num_classes
    assert expected["baseline"] == d * 2 * k + 2 * k
    assert expected["positive_coop"] == k * n_ctx * width + k * d
    assert expected["dual_coop"] == 2 * k * n_ctx * width


# -- initialisation ------------------------------------------------------------------------------


class RandomDraws(TorchDispatchMode):
    """Records the device of every random draw (what a seed's generator decides)."""

    RANDOM = ("normal", "uniform", "randn", "rand", "random", "randint", "randperm", "bernoulli", "exponential")

    def __init__(self):
        super().__init__()
        self.devices: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.__name__.split(".")[0].rstrip("_") in self.RANDOM:
            self.devices.append(out.device.type)
        return out


@pytest.mark.parametrize("name", ["baseline", *PROMPT_SETUPS, "lapt"])
def test_initial_weights_are_drawn_on_the_cpu_whatever_the_backbones_device(tiny_rn, monkeypatch, name):
    """A seed's GPU and CPU runs share a trial key, so they must start from the same weights: drawn by
    the CPU generator, then moved (the CUDA generator gives other numbers for the same seed). The
    backbone here says it is on `meta`, a device that is not the CPU and holds no values."""
    from trainables.ood.lapt import LAPTPrompts

    monkeypatch.setattr(type(tiny_rn), "device", property(lambda self: torch.device("meta")))
    monkeypatch.setattr(type(tiny_rn), "tokenize", lambda self, texts: self._tokenizer(texts))  # the weights stay on the CPU
    draws = RandomDraws()
    with draws:
        built = LAPTPrompts(CLASSNAMES, ["stone", "cloud"], tiny_rn, n_ctx=4) if name == "lapt" else setups.build(name, CLASSNAMES, tiny_rn)
    assert draws.devices and set(draws.devices) == {"cpu"}
    assert {p.device.type for p in built.parameters()} == {"meta"}  # then moved to the backbone's device
