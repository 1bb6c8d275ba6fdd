"""The multi-node path for real: two Ray nodes on loopback (`ray start --head`, then `ray start
--address`), an `mlflow server` over HTTP, and the CLI joining them with `--address`."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from orchestrator.track.schema import (
    LAST_FAILURE_TAG,
    RAY_NODE_TAG,
    RETRIES_TAG,
    ROLE_TAG,
    TRIAL_ROLE,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
SPEC = {
    "name": "two_nodes",
    "datasets": [{"name": "shapes", "kind": "synthetic", "synthetic_num_train": 16, "synthetic_num_test": 8}],
    "backbone": {"model": "RN-tiny", "image_size": 64},
    "setups": ["baseline", "dual_coop"],
    "label_ratios": [0.1, 0.5],
    "seeds": [1],
    "training": {"epochs": 2},
    # The worker node says it has a GPU this machine does not have: its actors are told to use the CPU
    # (under `auto`, an actor Ray gives a GPU that torch cannot use stops in one line).
    "resources": {"cpus_per_trial": 1, "device": "cpu"},
}
# Ray 2.60 sends its auth token to an explicit address only when told to (STACK-NOTES.md).
ENV = {**os.environ, "RAY_AUTH_MODE": "token", "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TwoNodes:
    """A head and a worker node of one CPU each, each in a PID namespace of its own and under a Ray
    temp dir made for it, so that `stop` ends exactly these nodes (never `ray stop`, which ends every
    Ray on the machine, a researcher's running experiment among them). `worker_prefix` runs the
    worker's `ray start` under another command (a private mount namespace, say); `lose_worker` ends
    all of the worker's processes at once, as a machine that goes away."""

    def __init__(self, worker_prefix: tuple[str, ...] = (), env: dict | None = None, worker_env: dict | None = None,
                 worker_gpus: int = 0):  # fmt: skip
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ray-two-nodes-"))
        self.head = self._node((), env, "--head", f"--port={port}", "--include-dashboard=false", "--disable-usage-stats",
                               f"--temp-dir={self.temp_dir}")  # fmt: skip
        # A declared GPU on this CPU machine: Ray schedules GPU work there (its actors are told to use the CPU).
        self.worker = None
        try:
            _wait_for(lambda: _accepts(port), "the head node")
            self.worker = self._node(worker_prefix, worker_env or env, f"--address={self.address}", f"--num-gpus={worker_gpus}")
            _wait_for(lambda: self.worker_node_id() is not None, "the worker node")
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _node(prefix: tuple[str, ...], env: dict | None, *args: str) -> subprocess.Popen:
        # unshare passes SIGKILL on to the namespace's first process; the kernel then kills every other one.
        return subprocess.Popen(
            [*prefix, "unshare", "--pid", "--fork", "--kill-child=SIGKILL", "--mount-proc", shutil.which("ray"), "start",
             "--num-cpus=1", "--block", *args],
            env=env or ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip

    def worker_node_id(self) -> str | None:
        """The worker node's Ray id, once it has joined (asked from a separate driver process)."""
        ask = ("import ray; ray.init(address='%s', logging_level='ERROR'); "
               "print(*[n['NodeID'] for n in ray.nodes() if n['Alive'] and 'node:__internal_head__' not in n['Resources']])")  # fmt: skip
        done = subprocess.run([sys.executable, "-c", ask % self.address], env=ENV, capture_output=True, text=True, timeout=60)
        return done.stdout.strip() or None

    def lose_worker(self) -> None:
        self.worker.kill()
        self.worker.wait()

    def stop(self) -> None:
        for node in (self.worker, self.head):
            if node is not None and node.poll() is None:
                node.kill()
                node.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _wait_for(ready, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"{what} did not start within {timeout:g} s"
        time.sleep(0.5)


class ServerProcess:
    """A server started in its own session, stopped with everything it started."""

    process: subprocess.Popen

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=60)


class MlflowServer(ServerProcess):
    """`mlflow server` on loopback with a SQLite backend and served artifacts; or, given `auth`
    (username, password), docker/mlflow-entrypoint.sh: the compose file's server with basic auth."""

    def __init__(self, folder: Path, auth: tuple[str, str] | None = None, port: int | None = None):
        port = str(port or free_port())
        self.uri = f"http://127.0.0.1:{port}"
        backend, artifacts = f"sqlite:///{folder / 'server.db'}", str(folder / "artifacts")
        if auth is None:
            command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
                       "--artifacts-destination", artifacts, "--host", "127.0.0.1", "--port", port, "--workers", "1"]  # fmt: skip
            env = ENV
        else:
            command = [str(REPO / "docker" / "mlflow-entrypoint.sh"), "--workers", "1"]
            env = {**ENV, "MLFLOW_AUTH_ADMIN_USERNAME": auth[0], "MLFLOW_AUTH_ADMIN_PASSWORD": auth[1],
                   "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-key", "MLFLOW_BACKEND_STORE_URI": backend,
                   "MLFLOW_ARTIFACTS_DESTINATION": artifacts, "MLFLOW_AUTH_DIR": str(folder), "MLFLOW_HOST": "127.0.0.1",
                   "MLFLOW_PORT": port, "MLFLOW_ALLOWED_HOSTS": f"127.0.0.1:{port}",
                   "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # fmt: skip
        self.process = subprocess.Popen(
            command, env=env, stdout=open(folder / "mlflow-server.txt", "w"), stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            assert self.process.poll() is None and time.monotonic() < deadline, (folder / "mlflow-server.txt").read_text()
            time.sleep(1)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.stop()


class ObjectStore(ServerProcess):
    """An S3 endpoint on loopback (moto's server) with one bucket, `results`; `env` points boto3 and
    pyarrow (so Ray Tune, on every node) at it, as AWS_ENDPOINT_URL points them at MinIO in compose."""

    BUCKET = "results"

    def __init__(self, folder: Path):
        port = free_port()
        self.env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test-key",
                    "AWS_SECRET_ACCESS_KEY": "test-secret", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=open(folder / "moto.txt", "w"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        wait_for(lambda: self._answers(), timeout=60)
        self.client().create_bucket(Bucket=self.BUCKET)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", int(self.env["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])), timeout=1):
                return True
        except OSError:
            return self.process.poll() is not None  # ended: the client call below says why

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.env["AWS_ENDPOINT_URL"], aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"], region_name=self.env["AWS_DEFAULT_REGION"])  # fmt: skip

    def keys(self, prefix: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.BUCKET, Prefix=prefix)
        return [entry["Key"].removeprefix(prefix) for page in pages for entry in page.get("Contents", [])]


@pytest.fixture(scope="module")
def object_store(tmp_path_factory):
    store = ObjectStore(tmp_path_factory.mktemp("object-store"))
    yield store
    store.stop()


def run_cli(cwd: Path, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    (cwd / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", "spec.yaml", *args],
        cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_grid_runs_on_both_nodes_and_every_run_reaches_the_server(tmp_path, mlflow_server):
    nodes = TwoNodes()
    try:
        done = run_cli(tmp_path, "--address", nodes.address, "--tracking-uri", mlflow_server.uri)
    finally:
        nodes.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All 4 trials finished" in done.stdout
    assert "View run" not in done.stdout  # MLflow's per-run links over HTTP would drown the progress
    # No GPU in this cluster: the driver encodes the cache, saying first how long that will take.
    estimate = re.search(r"Encoding 24 images on this machine's CPU \(\d+ loader workers\): about .+ at [\d.]+ images/s", done.stdout)
    assert "No GPU in the Ray cluster" in done.stdout and estimate, done.stdout
    assert done.stdout.index("No GPU in the Ray cluster") < estimate.start() < done.stdout.index("2 encoded, 0 already cached")

    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name(SPEC["name"])
    trials = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags[ROLE_TAG] == TRIAL_ROLE]
    assert len(trials) == 4
    for run in trials:
        assert run.info.status == "FINISHED"
        assert {"mAP", "best_mAP", "train_loss"} <= set(run.data.metrics)
        assert len(client.get_metric_history(run.info.run_id, "mAP")) == 2  # one point per epoch
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["per_class_ap.csv"]
    assert len({run.data.tags[RAY_NODE_TAG].split()[0] for run in trials}) == 2  # trials ran on both nodes
    # Nothing was written next to the driver: the server holds the runs and their artifacts.
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


def test_results_folder_a_node_cannot_see_is_refused_before_any_trial(tmp_path, mlflow_server):
    storage = tmp_path / "storage"
    storage.mkdir()
    # The worker node runs in its own mount namespace, with an empty tmpfs over the storage folder:
    # a node-local disk at the same path, as on a cluster without a shared filesystem.
    masked = ("unshare", "--mount", "--propagation", "private", "sh", "-c", f'mount -t tmpfs tmpfs "{storage}" && exec "$0" "$@"')
    if subprocess.run([*masked, "true"], capture_output=True).returncode != 0:
        pytest.skip("no private mount namespaces here (unshare needs CAP_SYS_ADMIN)")
    nodes = TwoNodes(worker_prefix=masked)
    try:
        done = run_cli(tmp_path, "--address", nodes.address, "--tracking-uri", mlflow_server.uri, "--storage", str(storage))
    finally:
        nodes.stop()
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"storage {storage} is not shared" in done.stderr
    assert "Traceback" not in done.stderr
    assert not list((storage / SPEC["name"]).rglob("result.json"))  # no trial ran


def test_results_go_to_an_object_store_from_both_nodes_and_resume_from_there(tmp_path, mlflow_server, object_store):
    env = {**ENV, **object_store.env}
    command = ("--address", None, "--tracking-uri", mlflow_server.uri, "--storage", "s3://results/grids", "--set", "name=in_s3")
    nodes = TwoNodes(env=env)
    try:
        arguments = [nodes.address if word is None else word for word in command]
        done = run_cli(tmp_path, *arguments, env=env)
        again = run_cli(tmp_path, *arguments, env=env)
    finally:
        nodes.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "results in s3://results/grids/in_s3" in done.stdout
    keys = object_store.keys("grids/in_s3/")
    # The experiment's metadata, and the Tune experiment of its spec (`<name>/<spec hash>/`).
    assert "orchestrator.json" in keys
    tune_experiment = next(k.split("/")[0] + "/" for k in keys if k.endswith("/tuner.pkl"))
    assert any(k.startswith(f"{tune_experiment}experiment_state-") for k in keys)
    trial_results = sorted(k for k in keys if k.endswith("/result.json"))
    assert "Fused groups: 4 trials in 2 groups (2, 2 members) for 2 trial slots" in done.stdout  # a CPU on each node
    assert len(trial_results) == 2  # a Ray trial per group
    assert sum("/checkpoint_" in k for k in keys) >= 4  # every group's checkpoints, from whichever node ran it
    # Only the driver's own state is on this disk, no trial results.
    assert not list((tmp_path / "runs").rglob("result.json"))

    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("in_s3")
    trials = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags[ROLE_TAG] == TRIAL_ROLE]
    assert len(trials) == 4 and {run.info.status for run in trials} == {"FINISHED"}
    assert len({run.data.tags[RAY_NODE_TAG].split()[0] for run in trials}) == 2
    # The same command again resumes from the store: nothing reruns, no epoch is logged twice.
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Resuming 'in_s3'" in again.stdout and "All 4 trials finished" in again.stdout
    for run in trials:
        assert len(client.get_metric_history(run.info.run_id, "mAP")) == 2


def test_an_object_store_a_node_cannot_reach_is_refused_before_any_trial(tmp_path, mlflow_server, object_store):
    env = {**ENV, **object_store.env}
    closed = {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}  # the worker's endpoint answers nothing
    nodes = TwoNodes(env=env, worker_env=closed)
    try:
        done = run_cli(tmp_path, "--address", nodes.address, "--tracking-uri", mlflow_server.uri,
                       "--storage", "s3://results/grids", "--set", "name=unreachable", env=env)  # fmt: skip
    finally:
        nodes.stop()
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    # One node named (the worker, not the head, which reaches the store), with what its store said.
    assert re.match(r"error: storage s3://results/grids/unreachable is not reachable from Ray node\(s\) [\d.]+ \([0-9a-f]{8}\): \S", line)
    assert "Could not connect" in line and "AWS_ENDPOINT_URL" in line
    assert not [k for k in object_store.keys("grids/unreachable/") if k.endswith("result.json")]  # no trial ran


def test_a_missing_bucket_is_one_line(tmp_path, object_store):
    done = run_cli(tmp_path, "--storage", "s3://no-such-bucket/grids", env={**ENV, **object_store.env})
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: cannot use storage s3://no-such-bucket/grids/two_nodes: ") and "no-such-bucket" in line


def test_compose_mlflow_server_lets_in_only_its_users(tmp_path):
    """docker/mlflow-entrypoint.sh for real: anonymous and wrong credentials are refused (the CLI
    says so in one line, exit 2), the admin from the environment logs a whole run."""
    server = MlflowServer(tmp_path, auth=("admin", "a-long-test-password"))
    try:
        search = urllib.request.Request(f"{server.uri}/api/2.0/mlflow/experiments/search?max_results=1")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(search, timeout=10)
        assert refused.value.code == 401

        anonymous = run_cli(tmp_path, "--tracking-uri", server.uri, "--set", "label_ratios=[0.5]", "--set", "setups=[baseline]")
        assert anonymous.returncode == 2, anonymous.stderr
        assert anonymous.stderr.strip().splitlines() == [
            f"error: MLflow tracking server {server.uri} refused a request without credentials: "
            "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        ]
        wrong = {**ENV, "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "not-the-password"}
        refused_user = run_cli(tmp_path, "--tracking-uri", server.uri, env=wrong)
        assert refused_user.returncode == 2 and "refused user 'admin'" in refused_user.stderr

        admin = {**ENV, "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "a-long-test-password"}
        done = run_cli(tmp_path, "--tracking-uri", server.uri, "--set", "label_ratios=[0.5]", "--set", "setups=[baseline]", env=admin)
        assert done.returncode == 0, done.stdout + done.stderr
        os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD="a-long-test-password")
        try:
            client = MlflowClient(server.uri)
            experiment = client.get_experiment_by_name(SPEC["name"])
            (trial,) = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags[ROLE_TAG] == TRIAL_ROLE]
        finally:
            del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
        assert trial.info.status == "FINISHED" and "best_mAP" in trial.data.metrics
    finally:
        server.stop()


def test_trials_of_a_lost_node_resume_elsewhere_from_their_checkpoint(tmp_path):
    if subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True).returncode != 0:
        pytest.skip("no PID namespaces here (unshare needs CAP_SYS_ADMIN)")
    nodes = TwoNodes()
    spec = {**SPEC, "setups": ["dual_coop"], "datasets": [{**SPEC["datasets"][0], "synthetic_num_train": 32}],
            "training": {"epochs": 30, "batch_size": 4}, "resources": {"cpus_per_trial": 1, "max_failures": 2}}  # fmt: skip
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    driver = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", "spec.yaml", "--address", nodes.address], cwd=tmp_path, env=ENV,
        stdout=open(tmp_path / "output.txt", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        client = wait_for(lambda: MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}") if "Starting" in (tmp_path / "output.txt").read_text() else None)
        experiment = wait_for(lambda: client.get_experiment_by_name(SPEC["name"]))
        worker_node = wait_for(lambda: nodes.worker_node_id())

        def trial_on_worker():
            for run in client.search_runs([experiment.experiment_id], f"tags.`{ROLE_TAG}` = '{TRIAL_ROLE}'"):
                epochs = len(client.get_metric_history(run.info.run_id, "mAP"))
                if run.data.tags.get(RAY_NODE_TAG, "").startswith(worker_node) and 2 <= epochs < 25:
                    return run.info.run_name, epochs
            return None

        lost_trial, epochs_before = wait_for(trial_on_worker)
        nodes.lose_worker()
        driver.wait(timeout=600)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        nodes.stop()
    output = (tmp_path / "output.txt").read_text()
    assert driver.returncode == 0, output
    trials = client.search_runs([experiment.experiment_id], f"tags.`{ROLE_TAG}` = '{TRIAL_ROLE}'")
    (run,) = [r for r in trials if r.info.run_name == lost_trial]
    assert run.info.status == "FINISHED"
    assert int(run.data.tags[RETRIES_TAG]) >= 1
    assert run.data.tags[LAST_FAILURE_TAG]  # what Ray said about the lost node
    assert not run.data.tags[RAY_NODE_TAG].startswith(worker_node)  # finished on the head
    # Each epoch logged once, none lost, and the restart began after the last checkpoint, not at 1.
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "mAP")]
    assert steps == list(range(1, 31))
    (result_file,) = (tmp_path / "runs" / SPEC["name"]).glob(f"*/{lost_trial}/result.json")  # in the Tune experiment of the spec
    results = [json.loads(line) for line in result_file.read_text().splitlines()]
    first_epochs = [r["epoch"] for r in results]
    assert first_epochs.count(1) == 1, first_epochs  # resumed from a checkpoint: epoch 1 never ran again


def wait_for(probe, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError("timed out")



def test_results_wait_while_the_tracking_server_is_down_and_are_delivered_when_it_returns(tmp_path):
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    server = MlflowServer(server_dir)
    port = int(server.uri.rsplit(":", 1)[1])
    # One trial at a time, unfused, so that the server goes away between trials (a fused group's members
    # reach MLflow through the same handlers: tests/test_tracking.py).
    spec = {**SPEC, "training": {"epochs": 6, "batch_size": 4},
            "resources": {"cpus_per_trial": 1, "max_concurrent_trials": 1, "fuse": "off"}}  # fmt: skip
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    command = [sys.executable, "-m", "orchestrator", "run", "spec.yaml", "--tracking-uri", server.uri]
    driver = subprocess.Popen(command, cwd=tmp_path, env=ENV, stdout=open(tmp_path / "output.txt", "w"),
                              stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        client = MlflowClient(server.uri)
        experiment = wait_for(lambda: client.get_experiment_by_name(SPEC["name"]))
        finished = f"tags.`{ROLE_TAG}` = '{TRIAL_ROLE}' and attributes.status = 'FINISHED'"
        wait_for(lambda: client.search_runs([experiment.experiment_id], finished))
        server.stop()  # midway: one trial logged, three to go
        stopped = time.monotonic()
        driver.wait(timeout=600)
        outage_s = time.monotonic() - stopped
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    output = (tmp_path / "output.txt").read_text()
    assert driver.returncode == 1, output
    assert f"MLflow at {server.uri} does not answer; trial results are kept in" in output
    # In the Tune experiment of the spec, `runs/<name>/<spec hash>`.
    assert re.search(rf"wait in {re.escape(str(tmp_path / 'runs' / SPEC['name']))}/[0-9a-f]{{12}}; run the same command again", output)
    assert "Traceback" not in output

    server = MlflowServer(server_dir, port=port)  # back, on the same store
    try:
        started = time.monotonic()
        again = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
        print(f"outage run {outage_s:.0f} s, delivering run {time.monotonic() - started:.0f} s")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "Delivered to MLflow the results of " in again.stdout
        trials = client.search_runs([experiment.experiment_id], f"tags.`{ROLE_TAG}` = '{TRIAL_ROLE}'")
        assert len(trials) == 4 and {run.info.status for run in trials} == {"FINISHED"}
        for run in trials:  # every epoch once, the final metrics and the per-class artifact, as if never down
            assert [m.step for m in client.get_metric_history(run.info.run_id, "mAP")] == list(range(1, 7)), run.info.run_name
            assert "best_mAP" in run.data.metrics
            assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["per_class_ap.csv"]
    finally:
        server.stop()


def _cache_cli(cwd: Path, spec: dict, *args: str) -> subprocess.CompletedProcess:
    (cwd / "spec.yaml").write_text(yaml.safe_dump(spec))
    return subprocess.run([sys.executable, "-m", "orchestrator", "cache", "spec.yaml", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def _cache_entries(cache_dir: Path) -> dict[str, np.ndarray]:
    return {path.name: np.load(path) for path in sorted((cache_dir / "features").glob("*.npy"))}


def test_the_gpu_node_fills_the_cache_and_the_trials_read_it(tmp_path, mlflow_server):
    nodes = TwoNodes(worker_gpus=1)
    try:
        worker = nodes.worker_node_id()
        filled = _cache_cli(tmp_path, SPEC, "--address", nodes.address)
        stored = {path.name: path.stat().st_mtime_ns for path in (tmp_path / "runs" / "cache" / "features").glob("*.npy")}
        done = run_cli(tmp_path, "--address", nodes.address, "--tracking-uri", mlflow_server.uri)
        # The online mode's decoded store is built by the GPU node's actor too, where the trials read it.
        online = _cache_cli(tmp_path, {**SPEC, "features": {"mode": "online"}}, "--address", nodes.address)
    finally:
        nodes.stop()
    assert filled.returncode == 0, filled.stdout + filled.stderr
    # Every shard was encoded by the actor on the node that declares the GPU, none by the driver's node.
    assert f"Feature cache: 2 entries; 2 shards encoded on the GPU nodes (2 on {worker[:8]}), 0 already stored" in filled.stdout
    assert "No GPU in the Ray cluster" not in filled.stdout
    local = _cache_cli(tmp_path, SPEC, "--set", f"cache_dir={tmp_path / 'local-cache'}")
    assert local.returncode == 0, local.stderr
    on_cluster, here = _cache_entries(tmp_path / "runs" / "cache"), _cache_entries(tmp_path / "local-cache")
    assert on_cluster.keys() == here.keys() and len(here) == 2
    for name, array in here.items():
        # The same features to fp16's precision (the actor's one thread sums in another order than the two here).
        np.testing.assert_allclose(on_cluster[name].astype(np.float32), array.astype(np.float32), rtol=2e-3, atol=2e-3 * np.abs(array).max())
    assert not list((tmp_path / "runs" / "cache" / "features").glob("*.shards"))  # joined, and the shards removed

    assert done.returncode == 0, done.stdout + done.stderr
    assert "Feature cache: 2 entries; 0 shards encoded on the GPU nodes, 2 already stored" in done.stdout
    after = {path.name: path.stat().st_mtime_ns for path in (tmp_path / "runs" / "cache" / "features").glob("*.npy")}
    assert after == stored  # the trials read the cache the fill made; nothing was encoded again
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name(SPEC["name"])
    assert len([r for r in client.search_runs([experiment.experiment_id]) if r.data.tags[ROLE_TAG] == TRIAL_ROLE]) == 4
    assert online.returncode == 0, online.stdout + online.stderr
    (store,) = (tmp_path / "runs" / "cache" / "decoded").glob("*.json")
    assert json.loads(store.read_text())["inputs"]["split"] == "train"


def test_a_fill_whose_actor_is_killed_midway_completes_encoding_each_shard_once(tmp_path):
    # Enough images that the actor is caught encoding: 1,024 training images, one shard each split.
    spec = {**SPEC, "datasets": [{"name": "shapes", "kind": "synthetic", "synthetic_num_train": 1024, "synthetic_num_test": 8}]}
    nodes = TwoNodes(worker_gpus=1)
    try:
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
        fill = subprocess.Popen([sys.executable, "-m", "orchestrator", "cache", "spec.yaml", "--address", nodes.address], cwd=tmp_path,
                                env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        killed = None
        deadline = time.monotonic() + 240
        while killed is None and fill.poll() is None and time.monotonic() < deadline:
            found = subprocess.run(["pgrep", "-f", "ray::ShardEncoder.encode"], capture_output=True, text=True).stdout.split()
            if found:
                killed = int(found[0])
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.02)
        stdout, stderr = fill.communicate(timeout=300)
    finally:
        nodes.stop()
    assert killed is not None, "the fill ended before an actor was seen encoding"
    assert fill.returncode == 0, stdout + stderr
    assert "2 shards encoded on the GPU nodes" in stdout and ", 1 encoded again after their actor died" in stdout, stdout
    entries = _cache_entries(tmp_path / "runs" / "cache")
    assert sorted(array.shape[0] for array in entries.values()) == [8, 1024]
    assert not list((tmp_path / "runs" / "cache" / "features").glob("*.shards"))
