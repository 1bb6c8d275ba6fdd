"""The deployment files, checked by the linters that install here (hadolint, the compose-spec schema,
yamllint, `docker compose config` where a compose is present) and for what they promise: pinned
versions that agree with each other, secrets only from an env file, only the two UIs published."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
SECRETS = ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "RAY_AUTH_TOKEN")


def tool(name: str) -> str:
    """A linter installed with the test extras, next to this Python."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else shutil.which(name) or pytest.fail(f"{name} is not installed (pip install -e '.[test]')")


def env_example() -> dict[str, str]:
    lines = [line for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def compose_config(env_file: Path) -> subprocess.CompletedProcess | None:
    """`docker compose config` (v2) or `docker-compose config` (v1) on the compose file, or None."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        command = ["docker", "compose"]
    elif shutil.which("docker-compose"):
        command = ["docker-compose"]
    else:
        return None
    return subprocess.run(
        [*command, "--project-directory", str(DOCKER), "-f", str(COMPOSE), "--env-file", str(env_file), "config"],
        capture_output=True, text=True,
    )  # fmt: skip


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "mlflow.Dockerfile"])
def test_dockerfiles_pass_hadolint_and_run_as_a_non_root_user(dockerfile):
    done = subprocess.run([tool("hadolint"), "--no-color", str(DOCKER / dockerfile)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    users = re.findall(r"^USER (\S+)", (DOCKER / dockerfile).read_text(), flags=re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("0", "root")


def test_compose_file_matches_the_compose_spec_schema():
    done = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_yaml_files_pass_yamllint():
    files = [COMPOSE, *sorted((DOCKER / "k8s").glob("*.yaml")), *sorted((REPO / "search_spaces").glob("*.yaml"))]
    done = subprocess.run(
        [tool("yamllint"), "--strict", "-c", str(REPO / ".yamllint.yaml"), *map(str, files)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_variable_of_the_compose_file_is_in_the_env_example_and_no_secret_has_a_value():
    used = set(re.findall(r"\$\{([A-Z_]+)", COMPOSE.read_text()))
    example = env_example()
    assert used <= set(example), used - set(example)
    assert set(SECRETS) <= used
    assert all(example[name] == "" for name in SECRETS)  # the example holds no usable secret
    # Secrets are required (`:?`): compose refuses to start without them rather than use a default.
    assert all(re.search(rf"\$\{{{name}:\?", COMPOSE.read_text()) for name in SECRETS)
    assert "docker/.env" in (REPO / ".gitignore").read_text().splitlines()
    assert "**/.env" in (REPO / ".dockerignore").read_text().splitlines()


def test_compose_config_publishes_only_the_mlflow_ui_and_the_ray_dashboard(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v or 'test-value-' + k.lower()}\n" for k, v in env_example().items()))
    done = compose_config(env_file)
    if done is None:
        pytest.skip("no docker compose here; the schema test covers the file")
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    published = {
        name: sorted(str(p) if isinstance(p, str) else f"{p.get('host_ip')}:{p['published']}:{p['target']}" for p in s.get("ports", []))
        for name, s in services.items()
    }  # fmt: skip
    published = {name: ports for name, ports in published.items() if ports}
    assert {name: [p.removesuffix("/tcp") for p in ports] for name, ports in published.items()} == {
        "mlflow": ["127.0.0.1:5000:5000"],
        "ray-head": ["127.0.0.1:8265:8265"],
    }
    assert set(services) == {"ray-head", "ray-worker", "mlflow", "postgres", "minio", "minio-bucket"}
    assert all("healthcheck" in services[name] for name in ("ray-head", "mlflow", "postgres", "minio"))

    # Without the env file's secrets compose refuses, naming the first one missing.
    incomplete = tmp_path / "incomplete.env"
    incomplete.write_text(env_file.read_text().replace("POSTGRES_PASSWORD=", "UNRELATED="))
    refused = compose_config(incomplete)
    assert refused.returncode != 0 and "POSTGRES_PASSWORD" in refused.stderr


def test_images_manifests_and_lock_agree_on_versions():
    lock = dict(line.split("==") for line in (DOCKER / "requirements.lock").read_text().splitlines() if "==" in line)
    for package in ("ray", "torch", "mlflow", "optuna", "open_clip_torch"):
        assert lock[package] == metadata.version(package), package  # the lock is what the tests ran with
    # The image's torch comes from PyTorch's index for a CUDA 12 build (drivers >= 525.60), with its own CUDA runtime.
    assert not [name for name in lock if name.startswith(("nvidia-", "cuda-"))]
    assert "ARG TORCH_CUDA=cu12" in (DOCKER / "Dockerfile").read_text()
    ray_version = lock["ray"]
    assert f"rayproject/ray:{ray_version}-py311-gpu" in (DOCKER / "Dockerfile").read_text()
    assert f'"mlflow[auth]=={lock["mlflow"]}"' in (DOCKER / "mlflow.Dockerfile").read_text()
    for line in COMPOSE.read_text().splitlines():
        if line.strip().startswith("image:") and "clip-ablations" not in line:
            assert ":latest" not in line and ":" in line.split("image:")[1], line  # third-party images pinned

    job = yaml.safe_load((DOCKER / "k8s" / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and job["apiVersion"] == "ray.io/v1"
    assert job["spec"]["entrypoint"].startswith("python -m orchestrator run grid_full.yaml --address auto")
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == ray_version
    (worker,) = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    (claim,) = yaml.safe_load_all((DOCKER / "k8s" / "storage.yaml").read_text())
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # a trial resumes on any node
    shared = [v for v in cluster["headGroupSpec"]["template"]["spec"]["volumes"] if v["name"] == "shared"]
    assert shared[0]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
