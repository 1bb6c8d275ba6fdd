"""Text-encoder cost of K CoOp prompts at the full context length vs truncated after the longest EOT.

    python -m benchmarks.text_truncation [--model RN-tiny] [--classes 80] [--n-ctx 16] [--repeats 3]

Both variants encode the same prompts (`"X "*n_ctx + classname + "."`, class-specific contexts) and
backpropagate into the context vectors, as one training step of a prompt setup does. Under the
causal mask the tokens after the last EOT cannot change any EOT feature, so the features agree; the
maximum difference is printed with the timings. Class names are COCO's 80 (cycled for more). Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from trainables.backbone import load_clip
from trainables.backbone.runtime import FrozenCLIP
from trainables.data.coco import CLASSNAMES as COCO_CLASSNAMES
from trainables.prompts import PromptLearner


def full_length_prompts(frozen: FrozenCLIP, learner: PromptLearner, prompts: list[str]):
    """The learner's prompts at the full context length: its context spliced into the untruncated token embeddings."""
    token_ids = frozen.tokenize(prompts)
    with torch.no_grad():
        embeddings = frozen.token_embedding(token_ids)
    prefix, suffix = embeddings[:, :1], embeddings[:, 1 + learner.n_ctx :]

    def build() -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([prefix, learner.ctx, suffix], dim=1), token_ids

    return build


def seconds_per_step(encode, learner: PromptLearner, repeats: int) -> tuple[float, torch.Tensor]:
    """Median seconds of forward + backward over `repeats` runs (after one warm-up), and the features."""
    times = []
    for step in range(repeats + 1):
        learner.zero_grad(set_to_none=True)
        started = time.perf_counter()
        features = encode()
        features.sum().backward()
        if step:  # the first run warms up allocators and kernels
            times.append(time.perf_counter() - started)
    return statistics.median(times), features.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="RN-tiny", help="open_clip model name (random weights), e.g. RN101")
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--n-ctx", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    frozen = load_clip(args.model, None, image_size=224)
    classnames = [COCO_CLASSNAMES[i % len(COCO_CLASSNAMES)] for i in range(args.classes)]
    torch.manual_seed(0)
    learner = PromptLearner(classnames, frozen, n_ctx=args.n_ctx, csc=True)
    prompts = [" ".join(["X"] * learner.n_ctx) + f" {name}." for name in classnames]
    build_full = full_length_prompts(frozen, learner, prompts)

    full_time, full_features = seconds_per_step(lambda: frozen.encode_text(*build_full()), learner, args.repeats)
    short_time, short_features = seconds_per_step(learner.encode, learner, args.repeats)

    print(f"{args.model}: {args.classes} prompts, n_ctx={learner.n_ctx}, {torch.get_num_threads()} threads")
    print(f"full length  T={frozen.context_length:3d}: {full_time:8.3f} s forward+backward")
    print(f"truncated    T={learner.token_ids.shape[1]:3d}: {short_time:8.3f} s forward+backward")
    print(f"speed-up: {full_time / short_time:.2f}x; max |feature difference| {float((full_features - short_features).abs().max()):.2e}")


if __name__ == "__main__":
    main()
