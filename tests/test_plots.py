"""The aggregator's figures: what is drawn (lines = seed means, bands = ±std), and PNG/SVG files written."""

from __future__ import annotations

import statistics

import numpy as np
import pandas as pd
import pytest

from orchestrator.families.mlr import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def trial_frame(rows: list[dict]) -> pd.DataFrame:
    """Trials as `tables.read_trials` returns them (the columns the figures use)."""
    defaults = {
        "status": "FINISHED", "backbone": "RN101/openai@448", "last_mAP": 0.0, "trainable_params": 1000,
        "gpu_seconds": 0.0, "train_seconds": 60.0,
    }  # fmt: skip
    frame = pd.DataFrame([{**defaults, **row} for row in rows])
    return frame.assign(run_id=[f"run{i}" for i in range(len(frame))])


def grid_trials() -> pd.DataFrame:
    values = {
        ("positive_coop", 0.1): (70.0, 74.0), ("positive_coop", 0.5): (80.0, 81.0),
        ("baseline", 0.1): (72.0,), ("baseline", 0.5): (79.0,),
    }  # fmt: skip
    rows = [
        {"setup": setup, "dataset": "coco", "label_ratio": ratio, "seed": seed, "best_mAP": value}
        for (setup, ratio), per_seed in values.items()
        for seed, value in enumerate(per_seed, start=1)
    ]
    rows.append({"setup": "dual_coop", "dataset": "shapes", "backbone": "RN-tiny/random@128", "label_ratio": 0.5, "seed": 0, "best_mAP": 40.0})
    return trial_frame(rows)


def search_trial_frame(trials_per_cell: int = 30) -> pd.DataFrame:
    """Two setups x two ratios searched over gamma-, gamma+ and delta; only gamma- matters."""
    rng = np.random.default_rng(0)
    rows = []
    for setup in ("baseline", "positive_coop"):
        for ratio in (0.1, 0.5):
            for _ in range(trials_per_cell):
                gamma_neg, gamma_pos, clip = rng.uniform(0, 6), rng.uniform(0, 3), rng.uniform(0, 0.2)
                rows.append(
                    {
                        "setup": setup, "dataset": "coco", "label_ratio": ratio, "seed": 1,
                        "best_mAP": 60 + 20 * ratio - (gamma_neg - 3) ** 2 + 0.01 * rng.standard_normal(),
                        "params.loss.gamma_neg": str(gamma_neg), "params.loss.gamma_pos": str(gamma_pos),
                        "params.loss.clip": str(clip), "params.training.epochs": "3",
                    }
                )  # fmt: skip
    return trial_frame(rows)


def test_map_vs_ratio_draws_seed_means_with_std_bands():
    figure = plots.map_vs_ratio_figure(grid_trials(), "best_mAP")
    axes = [axis for axis in figure.axes if axis.get_visible()]
    assert [axis.get_title() for axis in axes] == ["coco (RN101/openai@448)", "shapes (RN-tiny/random@128)"]
    coco = axes[0]
    lines = {line.get_label(): line for line in coco.get_lines()}
    assert set(lines) == {"Baseline", "PositiveCoOp"}
    assert list(lines["PositiveCoOp"].get_xdata()) == pytest.approx([10, 50])
    assert list(lines["PositiveCoOp"].get_ydata()) == pytest.approx([72.0, 80.5])
    assert list(lines["Baseline"].get_ydata()) == pytest.approx([72.0, 79.0])
    assert coco.get_xlabel() == "labels kept (%)" and coco.get_ylabel() == "best_mAP (%)"
    # Only PositiveCoOp has two seeds: one band, from mean - std to mean + std.
    assert len(coco.collections) == 1
    band = coco.collections[0].get_paths()[0].vertices[:, 1]
    lower = [72.0 - statistics.stdev([70, 74]), 80.5 - statistics.stdev([80, 81])]
    upper = [72.0 + statistics.stdev([70, 74]), 80.5 + statistics.stdev([80, 81])]
    assert band.min() == pytest.approx(min(lower)) and band.max() == pytest.approx(max(upper))
    assert {text.get_text() for text in figure.legends[0].get_texts()} == {"Baseline", "PositiveCoOp", "DualCoOp"}


def test_map_vs_ratio_ignores_unfinished_trials():
    frame = grid_trials()
    frame.loc[frame["setup"] == "baseline", "status"] = "FAILED"
    figure = plots.map_vs_ratio_figure(frame, "best_mAP")
    assert {line.get_label() for line in figure.axes[0].get_lines()} == {"PositiveCoOp"}


def test_plot_map_vs_ratio_writes_png_and_svg(tmp_path):
    paths = plots.plot_map_vs_ratio(grid_trials(), "best_mAP", tmp_path / "plots")
    assert [path.name for path in paths] == ["map_vs_ratio.png", "map_vs_ratio.svg"]
    assert paths[0].read_bytes().startswith(PNG_MAGIC) and paths[0].stat().st_size > 10_000
    svg = paths[1].read_text()
    assert "<svg" in svg and "labels kept (%)" in svg


def test_no_search_means_no_search_plots(tmp_path):
    assert plots.plot_search(grid_trials(), "best_mAP", tmp_path) == []
    assert not list(tmp_path.iterdir())


def test_search_plots_are_written(tmp_path):
    paths = plots.plot_search(search_trial_frame(12), "best_mAP", tmp_path)
    assert sorted(path.name for path in paths) == sorted(
        f"{stem}.{fmt}" for stem in ("search_scatter", "param_importances") for fmt in ("png", "svg")
    )
    for path in paths:
        assert path.stat().st_size > 1000
        if path.suffix == ".png":
            assert path.read_bytes().startswith(PNG_MAGIC)


def test_search_scatter_has_a_panel_per_cell_group_and_parameter():
    trials = search_trial_frame(12)
    searched, params = plots.numeric_search(trials, "best_mAP")
    # gamma-, gamma+, delta in the paper's order; epochs did not vary, so it was not searched.
    assert params == ["params.loss.gamma_neg", "params.loss.gamma_pos", "params.loss.clip"]
    figure = plots.search_scatter_figure(searched, params, "best_mAP")
    axes = [axis for axis in figure.axes if axis.get_visible()]
    assert len(axes) == 2 * 3  # (coco, 10%) and (coco, 50%) x three parameters
    assert "loss.gamma_neg" in axes[0].get_xlabel() and axes[0].get_title() == "coco (RN101/openai@448), 10% labels"
    points = sum(len(collection.get_offsets()) for collection in axes[0].collections)
    assert points == 2 * 12  # both setups' trials of that cell group


def test_importances_find_the_parameter_that_matters():
    searched, params = plots.numeric_search(search_trial_frame(), "best_mAP")
    importances = plots.param_importances(searched, params, "best_mAP")
    table = importances.pivot(index="setup", columns="param", values="importance")
    assert list(table.index) == ["baseline", "positive_coop"]
    assert table.sum(axis=1).to_numpy() == pytest.approx([1.0, 1.0])
    assert (table["params.loss.gamma_neg"] > 0.8).all()


def test_importances_skip_cells_without_variation():
    frame = search_trial_frame(6).assign(best_mAP=50.0)
    searched, params = plots.numeric_search(frame, "best_mAP")
    assert plots.param_importances(searched, params, "best_mAP").empty


def test_setup_colours_are_the_same_in_every_figure():
    alone = plots.setup_colors(["positive_coop"])
    together = plots.setup_colors(["baseline", "positive_coop", "lapt"])
    assert alone["positive_coop"] == together["positive_coop"]
    assert len(set(together.values())) == 3
