"""`describe` on the full grid needs no data on disk and shows the paper's parameter counts."""

import re
import subprocess
import sys

import pytest


def test_describe_grid_full_without_datasets(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "describe", "grid_full.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    setups = ("baseline", "positive_coop", "negative_coop", "dual_coop")
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines() if line.startswith(setups)}
    # PositiveCoOp paper, Table 1 / 3: 80k, 0.73M, 1.3M on COCO (80 classes); 20k, 0.17M, 0.3M on VOC (20).
    params = {setup: row[:2] for setup, row in rows.items()}
    assert params["baseline"] == ["82,080", "20,520"]
    assert params["positive_coop"] == params["negative_coop"] == ["696,320", "174,080"]
    assert params["dual_coop"] == ["1,310,720", "327,680"]
    # Peak GiB per trial (COCO, VOC): at least RN101's frozen weights (0.45 GiB in fp32); more
    # prompts through the text encoder, more memory.
    gib = {setup: [float(v) for v in row[2:]] for setup, row in rows.items()}
    assert all(0.45 < v < 4 for row in gib.values() for v in row)
    assert gib["baseline"][0] < gib["positive_coop"][0] < gib["dual_coop"][0]
    assert gib["dual_coop"][1] < gib["dual_coop"][0]  # VOC's 20 classes against COCO's 80
    assert "Cells: 72" in done.stdout
    assert not (tmp_path / "runs").exists()  # describing writes nothing


@pytest.mark.integration
def test_tune_packing_measures_trials_sharing_the_device_and_recommends(write_spec, minimal_spec, capsys):
    from orchestrator.cli import main

    spec = write_spec(minimal_spec(datasets=[{"name": "shapes", "kind": "synthetic", "synthetic_num_train": 32, "synthetic_num_test": 8}]))
    assert main(["tune-packing", str(spec), "--processes", "1,2", "--seconds", "2"]) == 0
    printed = capsys.readouterr().out
    assert "Packing dual_coop trials on shapes (RN-tiny at 64 px, batch 32) on cpu" in printed
    rows = [line.split() for line in printed.splitlines() if re.fullmatch(r"\s*\d+\s+\d+\s+[\d.]+x\s+[\d.]+\s+[\d.]+", line)]
    assert [row[0] for row in rows] == ["1", "2"] and all(float(row[1]) > 0 for row in rows)
    assert re.search(r"Use: [12] trials at once on this machine", printed)


@pytest.mark.parametrize(
    ("listed", "expected"),
    [
        ("{pid}, 1536\n999999, 40000\n", 1536 * 2**20),  # nvidia-smi's MiB of this process, less its (empty) pool
        ("999999, 40000\n", None),  # not listed (a container's own PID namespace): the estimate
        (None, None),  # no nvidia-smi at all
    ],
)
def test_packing_counts_what_a_process_holds_beside_its_allocator(monkeypatch, listed, expected):
    """The CUDA context and the libraries' workspaces belong in each packed process's memory."""
    import os

    import torch

    from orchestrator.run import packing

    def nvidia_smi(*args, **kwargs):
        if listed is None:
            raise FileNotFoundError("nvidia-smi")
        return subprocess.CompletedProcess(args, 0, stdout=listed.format(pid=os.getpid()), stderr="")

    monkeypatch.setattr(packing.subprocess, "run", nvidia_smi)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    assert packing.context_bytes(torch.device("cuda")) == (packing.CONTEXT_ESTIMATE if expected is None else expected)
    # A K whose processes fit on their pools alone, but not with their contexts, is not chosen.
    gib = 2**30
    measured = [packing.Packed(1, 100.0, 10 * gib), packing.Packed(2, 190.0, 10 * gib + 5 * gib)]
    assert packing.recommend(measured, device_bytes=32 * gib).processes == 1
