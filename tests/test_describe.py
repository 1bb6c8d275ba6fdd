"""`describe` on the full grid needs no data on disk and shows the paper's parameter counts."""

import subprocess
import sys


def test_describe_grid_full_without_datasets(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "describe", "grid_full.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    setups = ("baseline", "positive_coop", "negative_coop", "dual_coop")
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines() if line.startswith(setups)}
    # PositiveCoOp paper, Table 1 / 3: 80k, 0.73M, 1.3M on COCO (80 classes); 20k, 0.17M, 0.3M on VOC (20).
    assert rows["baseline"] == ["82,080", "20,520"]
    assert rows["positive_coop"] == rows["negative_coop"] == ["696,320", "174,080"]
    assert rows["dual_coop"] == ["1,310,720", "327,680"]
    assert "Cells: 72" in done.stdout
    assert not (tmp_path / "runs").exists()  # describing writes nothing
