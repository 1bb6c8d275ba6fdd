"""A tiny CLIP pre-trained contrastively on generated "shapes" images, for the synthetic demo.

With random weights the text encoder knows no class word: every prompt feature has a large cosine
with every image feature, DualCoOp's scales (20 x cos, x5) saturate the 2-way softmax and the
prompt setups get no gradient. Real CLIP weights are not available offline, so this trains the
tiny backbone as CLIP was trained, on a small scale: images rendered by the synthetic generator,
each paired with a caption listing what it shows ("a photo of a circle, a star and a ring."),
under the symmetric InfoNCE loss of CLIP (`open_clip.ClipLoss`).

    path = synthetic_clip_checkpoint("RN-tiny", 128, data_dir)    # trains once, then reuses the file
    clip = trainables.backbone.load_clip("RN-tiny", pretrained=str(path), image_size=128)

The images come from their own random stream (not the demo dataset's train or test split), so the
backbone never sees an image the demo trains or evaluates on.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from PIL import Image
from tqdm.auto import tqdm

from trainables import atomic
from trainables.backbone import runtime
from trainables.config import DatasetConfig
from trainables.data import synthetic, test_transform
from trainables.errors import UserInputError

RECIPE_VERSION = 2
"""Bump when the training recipe changes, so checkpoints of the old recipe are not reused.
2: fp32 throughout (1 ran the image tower under bf16 autocast)."""

LEARNING_RATE = 1e-3
WEIGHT_DECAY = 0.1
"""AdamW as CLIP (Radford et al. 2021 train with decoupled weight decay 0.1 on the weights)."""

POOL_SIZE = 2048
"""Distinct images rendered for one pre-training run; batches cycle over them."""

TRUNK_CHUNK = 64
"""Images per forward pass when a ResNet trunk encodes the pool once."""

PRETRAIN_STREAM = 2
"""Random stream of the pre-training images: the synthetic dataset's splits use streams 0 and 1."""

RENDER_SIZE = DatasetConfig.model_fields["synthetic_image_size"].default
"""Images are rendered at the demo dataset's default size and resized to the backbone's, as the demo's are."""

CAPTION_TEMPLATES = (
    "a photo of {}.",
    "a picture of {}.",
    "an image showing {}.",
    "a drawing of {}.",
    "{}.",
)

ABSENCE_PHRASINGS = (
    "{present}, no {absent}",
    "{present} and no {absent}",
    "{present} but no {absent}",
    "{present}, without {absent_with_article}",
)
"""How a caption names a class that is absent, after the ones present ("a circle and a star, no
ring"): what pretraining captions almost never do (0.47% of LAION-400M, PositiveCoOp section 5.2),
here at a chosen rate (`negation_rate`)."""


def synthetic_clip_checkpoint(
    model: str,
    image_size: int,
    data_dir: Path,
    *,
    seed: int = 0,
    steps: int = 200,
    batch_size: int = 64,
    num_classes: int = 8,
    negation_rate: float = 0.0,
    progress: bool = False,
) -> Path:
    """The checkpoint of `model` pre-trained on shapes, trained on the first call and reused after.

    The file is `data_dir/pretrained/<model>-shapes-<hash of the recipe>.pt`, a plain open_clip
    state dict for `trainables.backbone.load_clip(model, pretrained=<path>, image_size=image_size)`, with a
    `.json` sidecar holding the recipe, the loss of every step and the training time. Concurrent
    callers wait on a file lock; the file is renamed into place complete, so a reader never sees
    a partial one.
    """
    recipe = _recipe(model, image_size, seed, steps, batch_size, num_classes, negation_rate)
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(data_dir) / "pretrained"
    checkpoint = folder / f"{model}-shapes-{digest}.pt"
    sidecar = checkpoint.with_suffix(".json")

    def train(temporary: Path) -> None:
        started = time.perf_counter()
        clip_model, losses = train_synthetic_clip(
            model, image_size, seed=seed, steps=steps, batch_size=batch_size, num_classes=num_classes,
            negation_rate=negation_rate, progress=progress,
        )
        outcome = {**recipe, "losses": losses, "train_seconds": time.perf_counter() - started}
        atomic.replace(sidecar, lambda path: path.write_text(json.dumps(outcome, indent=2) + "\n"))
        torch.save(clip_model.state_dict(), temporary)  # renamed last: callers trust the checkpoint once it exists

    atomic.build_once(checkpoint, train, companions=(sidecar,))
    return checkpoint


def train_synthetic_clip(
    model: str,
    image_size: int,
    *,
    seed: int = 0,
    steps: int = 200,
    batch_size: int = 64,
    num_classes: int = 8,
    negation_rate: float = 0.0,
    progress: bool = False,
) -> tuple[open_clip.CLIP, list[float]]:
    """Pre-train `model` contrastively on rendered shapes; return the open_clip model and the loss of each step.

    It starts from the random weights `trainables.backbone.runtime.build(model, image_size, ...)` draws (its
    seed, and for ResNets its variance-preserving trunk init). The model stays in eval mode: the
    setups use the backbone frozen in eval mode, so this trains the very function they will use
    (BatchNorm at its running statistics, which never drift). Everything runs in fp32, on every
    machine: bf16 is emulated (up to 100x slower) on CPUs without AVX512-BF16 or AMX. Deterministic
    given the arguments on one machine (tested across thread counts); CPUs whose kernels sum in
    another order (AVX2 against AVX-512) end with other weights, up to 0.11 apart after 200 steps,
    and the demo's numbers move by a few points with them (tests/test_readme.py runs it on both).
    """
    _check_arguments(steps, batch_size, num_classes)
    clip_model = runtime.build(model, image_size, runtime.config_quick_gelu(model)).eval()
    tokenizer = open_clip.get_tokenizer(model)
    names = synthetic.classnames(num_classes)
    images, labels = render_pool(min(POOL_SIZE, steps * batch_size), num_classes, seed)
    encode_images = _image_encoder(clip_model, images, test_transform(image_size))

    optimizer = torch.optim.AdamW(_parameter_groups(clip_model), lr=LEARNING_RATE)
    loss_fn = open_clip.ClipLoss()
    caption_rng = np.random.default_rng([seed, RECIPE_VERSION])
    losses: list[float] = []
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=generator)
    cursor = 0
    for _ in tqdm(range(steps), desc=f"pre-training {model}", disable=None if progress else True):  # None: off when not a terminal
        if cursor + batch_size > len(order):  # a new pass over the pool, reshuffled
            order, cursor = torch.randperm(len(images), generator=generator), 0
        batch = order[cursor : cursor + batch_size].numpy()
        cursor += batch_size
        image_features = F.normalize(encode_images(batch).float(), dim=-1)
        captions = [caption(names, labels[i], caption_rng, negation_rate) for i in batch]
        text_features = clip_model.encode_text(tokenizer(captions), normalize=True)
        loss = loss_fn(image_features, text_features, clip_model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # CLIP clips the temperature at 100
            clip_model.logit_scale.clamp_(0, np.log(100))
        losses.append(loss.item())
    return clip_model.requires_grad_(False), losses


def _image_encoder(
    clip_model: open_clip.CLIP, images: np.ndarray, transform: Callable[[Image.Image], torch.Tensor]
) -> Callable[[np.ndarray], torch.Tensor]:
    """A function from indices into `images` to their (unnormalised) image embeddings, with gradient.

    ModifiedResNet: the convolutional trunk stays at its random init and is run once over the pool;
    only the attention pool (whose value and output projections make the dense features) trains.
    Backpropagating through the convolutions costs ~6x more on a CPU, and the random trunk's
    features already separate the shapes (a linear head on them learns). ViT: the whole tower
    trains.
    """
    visual = clip_model.visual

    def pixels(indices: np.ndarray) -> torch.Tensor:
        return torch.stack([transform(Image.fromarray(images[i])) for i in indices])

    if isinstance(visual, ModifiedResNet):
        visual.requires_grad_(False)
        visual.attnpool.requires_grad_(True)
        chunks = np.array_split(np.arange(len(images)), max(1, len(images) // TRUNK_CHUNK))
        with torch.no_grad():
            trunk = torch.cat([visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(pixels(c)))))) for c in chunks])
        return lambda indices: visual.attnpool(trunk[indices])

    return lambda indices: clip_model.encode_image(pixels(indices))


def render_pool(count: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` rendered images (uint8 [count, S, S, 3]) and their labels (bool [count, num_classes])."""
    images = np.empty((count, RENDER_SIZE, RENDER_SIZE, 3), dtype=np.uint8)
    labels = np.zeros((count, num_classes), dtype=bool)
    for index in range(count):
        rng = np.random.default_rng([synthetic.GENERATOR_SEED, PRETRAIN_STREAM, seed, index])
        images[index], present = synthetic.render_image(rng, num_classes, RENDER_SIZE)
        labels[index, present] = True
    return images, labels


def caption(names: list[str], present: np.ndarray, rng: np.random.Generator, negation_rate: float = 0.0) -> str:
    """A caption listing the classes `present` (bool [K]) in random order, in a random template;
    with probability `negation_rate` it also names one absent class (`ABSENCE_PHRASINGS`). At rate 0
    it draws nothing more from `rng`: the captions, and the weights, of the plain recipe."""
    objects = [_with_article(names[k]) for k in rng.permutation(np.flatnonzero(present))]
    listed = objects[0] if len(objects) == 1 else f"{', '.join(objects[:-1])} and {objects[-1]}"
    template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
    absent = np.flatnonzero(~present)
    if negation_rate > 0 and len(absent) and rng.random() < negation_rate:
        name = names[rng.choice(absent)]
        phrasing = ABSENCE_PHRASINGS[rng.integers(len(ABSENCE_PHRASINGS))]
        listed = phrasing.format(present=listed, absent=name, absent_with_article=_with_article(name))
    return template.format(listed)


def _with_article(name: str) -> str:
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _parameter_groups(clip_model: open_clip.CLIP) -> list[dict]:
    """CLIP's AdamW groups: weight decay on matrices and convolutions, none on gains, biases, embeddings, temperature."""
    decayed, plain = [], []
    for name, parameter in clip_model.named_parameters():
        if not parameter.requires_grad:
            continue
        exempt = parameter.ndim < 2 or "embedding" in name or "logit_scale" in name
        (plain if exempt else decayed).append(parameter)
    return [{"params": decayed, "weight_decay": WEIGHT_DECAY}, {"params": plain, "weight_decay": 0.0}]


def _recipe(model: str, image_size: int, seed: int, steps: int, batch_size: int, num_classes: int, negation_rate: float) -> dict:
    """Everything the trained weights depend on: the arguments, the recipe and the generator (the
    negation rate only when set: the plain recipe's checkpoints keep their names)."""
    return {
        **({"negation_rate": negation_rate} if negation_rate > 0 else {}),
        "model": model,
        "image_size": image_size,
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "num_classes": num_classes,
        "recipe_version": RECIPE_VERSION,
        "learning_rate": LEARNING_RATE,
        "weight_decay": WEIGHT_DECAY,
        "pool_size": POOL_SIZE,
        "render_size": RENDER_SIZE,
        "generator_version": synthetic.GENERATOR_VERSION,
        "open_clip": open_clip.__version__,
    }


def _check_arguments(steps: int, batch_size: int, num_classes: int) -> None:
    if steps < 1:
        raise UserInputError(f"pre-training steps must be at least 1, got {steps}")
    if not 2 <= batch_size <= POOL_SIZE:
        raise UserInputError(
            f"pre-training batch_size must be between 2 (a contrastive batch) and {POOL_SIZE}, got {batch_size}"
        )
    if not 2 <= num_classes <= len(synthetic.SHAPE_CLASSES):
        raise UserInputError(
            f"pre-training num_classes must be between 2 and {len(synthetic.SHAPE_CLASSES)}, got {num_classes}"
        )
