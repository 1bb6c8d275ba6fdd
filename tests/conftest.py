"""Shared fixtures: tiny CLIP backbones, small experiment specs, MLflow stores and trial runs."""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from trainables.backbone import load_clip, runtime

from orchestrator.specs import ExperimentSpec, load_spec

# -- tiny random-weight CLIP backbones (built once per test session, frozen, CPU) ------------------

TINY_IMAGE_SIZE = 128


@pytest.fixture(scope="session")
def tiny_rn() -> runtime.FrozenCLIP:
    """The `RN-tiny` ModifiedResNet backbone at 128 px (dense features [B, 17, 64])."""
    return load_clip("RN-tiny", None, image_size=TINY_IMAGE_SIZE)


@pytest.fixture(scope="session")
def tiny_vit() -> runtime.FrozenCLIP:
    """The `ViT-tiny` backbone (patch 16) at 128 px (dense features [B, 64, 64])."""
    return load_clip("ViT-tiny", None, image_size=TINY_IMAGE_SIZE)


# -- experiment specs, written into a fresh working directory -------------------------------------

MINIMAL_SPEC = {
    "name": "unit",
    "datasets": [{"name": "shapes", "kind": "synthetic", "synthetic_num_train": 8, "synthetic_num_test": 8}],
    "backbone": {"model": "RN-tiny", "image_size": 64},
    "setups": ["baseline", "dual_coop"],
    "label_ratios": [0.1, 0.5],
    "seeds": [1],
    "training": {"epochs": 2},
}


@pytest.fixture(scope="session")
def minimal_spec() -> Callable[..., dict]:
    """`minimal_spec(**changes)`: a small valid spec as a dict (2 setups x 2 ratios x 1 seed on 8
    generated images, 2 epochs), with top-level fields replaced by `changes`."""

    def make(**changes) -> dict:
        return {**copy.deepcopy(MINIMAL_SPEC), **changes}

    return make


@pytest.fixture
def write_spec(tmp_path, monkeypatch) -> Callable[[dict, str], Path]:
    """`write_spec(spec, name="spec.yaml")`: write a spec dict as YAML into `tmp_path`, made the
    working directory (relative paths in the spec resolve there), and return its path."""
    monkeypatch.chdir(tmp_path)

    def write(spec: dict, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(spec))
        return path

    return write


@pytest.fixture
def make_spec(write_spec, minimal_spec) -> Callable[..., ExperimentSpec]:
    """`make_spec(**changes)`: the loaded `ExperimentSpec` of `minimal_spec(**changes)`."""

    def make(**changes) -> ExperimentSpec:
        return load_spec(write_spec(minimal_spec(**changes))).spec

    return make


# -- MLflow stores ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    """One SQLite store per test module (creating one takes seconds); each test gets its own experiment."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


_experiment_numbers = itertools.count()


@pytest.fixture
def tracked_spec(make_spec, tracking_uri) -> Callable[..., ExperimentSpec]:
    """`tracked_spec(**changes)`: `make_spec(**changes)` logging to the module's store, under an
    experiment name no other test uses."""

    def make(**changes) -> ExperimentSpec:
        return make_spec(name=f"tracked{next(_experiment_numbers)}", tracking_uri=tracking_uri, **changes)

    return make


@pytest.fixture(scope="session")
def log_trial() -> Callable[..., str]:
    """`log_trial(client, experiment_id, setup, (dataset, backbone), ratio, seed, best_map, ...)`: one
    trial run, as the orchestrator's MLflow callback writes it, with the tag, metric and param names
    written out here from docs/ARCHITECTURE.md; RUNNING stays unterminated. Returns the run id."""
    from mlflow.entities import (  # here: most test modules never import MLflow
        Metric,
        Param,
    )

    def log(
        client,
        experiment_id: str,
        setup: str,
        block: tuple[str, str],
        ratio: float,
        seed: int,
        best_map: float,
        status: str = "FINISHED",
        trainable_params: int = 1000,
        gpu_seconds: float = 0.0,
        train_seconds: float = 60.0,
        params: dict[str, str] | None = None,
        trial: int = 0,
        metrics: dict[str, float] | None = None,
    ) -> str:
        dataset, backbone = block
        cell_key = f"{setup}-{dataset}-r{ratio:g}-s{seed}"
        tags = {
            "orchestrator.role": "trial",
            "orchestrator.cell_key": cell_key,
            "orchestrator.trial_key": f"{cell_key}-t{trial}-0123abcd",
            "setup": setup,
            "dataset": dataset,
            "backbone": backbone,
            "label_ratio": str(ratio),
            "seed": str(seed),
            "spec_hash": "0123456789ab",
            "git_commit": "unknown",
        }
        run_id = client.create_run(experiment_id, tags=tags, run_name=cell_key).info.run_id
        now = int(time.time() * 1000)
        history = [Metric("mAP", best_map - 5 + epoch, now, epoch) for epoch in (1, 2)]
        history.append(Metric("mAP", best_map - 1, now, 3))
        final = {
            "best_mAP": best_map,
            "last_mAP": best_map - 1,
            "best_epoch": 2,
            "trainable_params": trainable_params,
            "train_seconds": train_seconds,
            "gpu_seconds": gpu_seconds,
            "kept_fraction": ratio,
            **(metrics or {}),
        }
        config = {
            "setup": setup,
            "label_ratio": str(ratio),
            "seed": str(seed),
            "dataset.name": dataset,
            "loss.gamma_neg": "2.0",
            "loss.gamma_pos": "1.0",
            "loss.clip": "0.05",
            "training.epochs": "3",
            **(params or {}),
        }
        client.log_batch(
            run_id,
            metrics=history + [Metric(key, float(value), now, 0) for key, value in final.items()],
            params=[Param(key, value) for key, value in config.items()],
        )
        if status != "RUNNING":
            client.set_terminated(run_id, status)
        return run_id

    return log


# -- a headless Chromium, for the tests that look at the MLflow UI as a user does ------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture
def chromium(tmp_path):
    """A headless Debian Chromium driven by selenium (`.ci/run` installs `chromium chromium-driver`)."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.skip(f"no browser: {', '.join(missing)} missing (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=2400,1000",
             "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium-profile'}"]  # fmt: skip
    for flag in flags:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()
