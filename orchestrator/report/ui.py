"""The `ui` command: MLflow's UI on a run store, with the address of each experiment's trial runs, best first."""

from __future__ import annotations

import argparse
import os
import sys

from trainables.errors import UserInputError

from orchestrator.specs import ExperimentSpec, require_existing_store, resolve_tracking_uri


def run(spec: ExperimentSpec | None, args: argparse.Namespace) -> int:
    """The `ui` command: the UI on `spec`'s store (None: `--tracking-uri`, else the working directory's)."""
    name = None
    if spec is not None:
        uri, name = spec.tracking_uri, spec.name
    else:
        try:
            uri = resolve_tracking_uri(args.tracking_uri)
        except ValueError as error:
            raise UserInputError(f"--tracking-uri: {error}") from None
    require_existing_store(uri, "run `python -m orchestrator run SPEC` first")
    if uri.startswith(("http://", "https://")):
        print(f"The tracking server has its own UI: open {uri}")
        return 0
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    command += ["--host", args.host, "--port", str(args.port)]
    address = f"http://{args.host}:{args.port}"
    print(f"MLflow UI on {address} (Ctrl-C stops it); the trial runs of each experiment, best first:")
    for experiment, page in _runs_pages(uri, address, name):
        print(f"  {experiment}: {page}")
    sys.stdout.flush()
    os.execv(sys.executable, command)
    return 0  # reached only where execv is replaced (the tests)


def _runs_pages(tracking_uri: str, address: str, experiment_name: str | None) -> list[tuple[str, str]]:
    """(experiment, address of its runs view in the UI) for `experiment_name`, or every experiment
    with runs; the id comes from the store, so the address opens the right page."""
    from mlflow.tracking import MlflowClient

    from orchestrator.track.schema import runs_page

    client = MlflowClient(tracking_uri)
    if experiment_name is not None:
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            raise UserInputError(f"no experiment '{experiment_name}' in {tracking_uri} (run the spec first)")
        experiments = [experiment]
    else:
        experiments = [e for e in client.search_experiments() if client.search_runs([e.experiment_id], max_results=1)]
    return [(e.name, runs_page(address, e.experiment_id)) for e in experiments]
