"""The tensor-memory count `describe` prints, against sizes worked out by hand."""

import torch

from trainables.backbone import load_clip
from trainables.mlr import memory, setups

N = 256
BLOCK = N * N * 4  # one [N, N] float32 tensor


def test_counts_outputs_and_frees_them():
    x = torch.randn(N, N)
    with memory.TensorMemory("cpu") as counted:
        counted.hold([x])
        y = x @ x
        z = y.relu()
        assert counted.current == 3 * BLOCK
        del y
        assert counted.current == 2 * BLOCK
        del z
    assert counted.current == BLOCK
    assert counted.peak == 3 * BLOCK


def test_counts_the_backward_pass():
    # loss = sum(relu(x @ w)): relu keeps its output for backward, mm keeps x (w needs the gradient).
    # Worst moment: x, w, relu's output and the incoming gradient while relu's backward writes its
    # result; then x, w, grad_y and grad_w. Either way 4 blocks, plus the 4-byte scalars of the loss.
    x = torch.randn(N, N)
    w = torch.randn(N, N, requires_grad=True)
    with memory.TensorMemory("cpu") as counted:
        counted.hold([x, w])
        loss = (x @ w).relu().sum()
        assert counted.current == 3 * BLOCK + 4
        loss.backward()
    assert 4 * BLOCK <= counted.peak <= 4 * BLOCK + 64
    assert w.grad is not None and counted.current <= 3 * BLOCK + 64  # x, w, w.grad


def test_mlr_trial_counts_weights_once_and_grows_with_the_prompts():
    backbone = load_clip("RN-tiny", None, 64)
    weights = sum(t.numel() * t.element_size() for t in (*backbone.parameters(), *backbone.buffers()))
    names = [f"class {i}" for i in range(20)]
    peaks = {
        name: memory.mlr_trial_bytes(
            setups.build(name, names, backbone), backbone, batch_size=8, eval_batch_size=16, chosen_precision="fp32"
        )
        for name in ("baseline", "positive_coop", "dual_coop")
    }
    assert weights < peaks["baseline"] < 1.5 * weights  # the backbone once, plus a linear head's step
    # DualCoOp encodes 2K prompts per step where PositiveCoOp encodes K: its activations double.
    assert peaks["baseline"] < peaks["positive_coop"] < peaks["dual_coop"]
    assert peaks["dual_coop"] - peaks["baseline"] > 1.5 * (peaks["positive_coop"] - peaks["baseline"])
