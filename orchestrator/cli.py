"""`python -m orchestrator {run,validate,describe,cache,tune-packing,table,status,ui}`: the command line.

Bad input (a spec value, a dataset path, an unreachable tracking server) is printed as one line
per problem with exit code 2 and no traceback; anything else is a bug and keeps its traceback.
Ctrl-C and SIGTERM end any command with one line and exit code 130 or 143 (`orchestrator.interrupt`).
Heavy libraries (Ray, MLflow, torch) are imported by the commands that need them, so `--help` and
`validate` stay quick.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from trainables.errors import UserInputError

from orchestrator.specs import LoadedSpec, load_spec

EXIT_USER_ERROR = 2
EXIT_BROKEN_PIPE = 1
"""What Python itself exits with when stdout's reader has gone away."""


def _load(args: argparse.Namespace, check_data: bool = True) -> LoadedSpec:
    overrides = list(args.overrides)
    if args.tracking_uri:
        overrides.append(f"tracking_uri={args.tracking_uri}")
    if args.storage:
        overrides.append(f"storage={args.storage}")
    return load_spec(args.spec, overrides, check_data=check_data)


# -- commands ----------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    from orchestrator.run.command import run_experiment

    return run_experiment(_load(args), address=args.address, fresh=args.fresh)


def _validate(args: argparse.Namespace) -> int:
    from orchestrator.specs.grid import Plan

    loaded = _load(args)
    plan = Plan.of(loaded.spec)
    print(f"{loaded.path}: valid ({len(plan.cells)} cells, {plan.total_trials} trials)")
    return 0


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of at least 1")
    return int(text)


def _describe(args: argparse.Namespace) -> int:
    from orchestrator.describe import describe

    # Describing needs no data on disk: COCO's, VOC's and the generated set's classes are known.
    print(describe(_load(args, check_data=False), devices=args.devices, profile=args.profile))
    return 0


def _cache(args: argparse.Namespace) -> int:
    from orchestrator.run import fill, fill_cluster
    from orchestrator.specs.grid import Plan

    plan = Plan.of(_load(args).spec)
    if args.address is None:
        fill.fill_locally(plan)
    else:
        from orchestrator.run.ray_session import joined_ray

        with joined_ray(args.address):
            fill_cluster.fill_on_cluster(plan)
    print(f"Feature cache: {plan.spec.cache_dir}")
    return 0


def _tune_packing(args: argparse.Namespace) -> int:
    from orchestrator.run import packing

    try:
        processes = sorted({int(k) for k in args.processes.split(",")})
    except ValueError:
        raise UserInputError(f"--processes: {args.processes!r} is not a list of counts like 1,2,4,8") from None
    if not processes or processes[0] < 1:
        raise UserInputError(f"--processes: counts must be at least 1, got {args.processes!r}")
    print(packing.run(_load(args), processes, args.seconds))
    return 0


def _ui(args: argparse.Namespace) -> int:
    from orchestrator.report import ui

    return ui.run(_load(args, check_data=False).spec if args.spec else None, args)


def _table(args: argparse.Namespace) -> int:
    from orchestrator.report import table

    return table.run(args)


def _status(args: argparse.Namespace) -> int:
    from orchestrator.report import status

    return status.run(args)


# -- parser ------------------------------------------------------------------------------------


def _add_spec_command(
    commands: argparse._SubParsersAction,
    name: str,
    handler: Callable[[argparse.Namespace], int],
    help: str,
    description: str,
) -> argparse.ArgumentParser:
    """A subcommand on one spec: the spec, its `--set` overrides, `--tracking-uri` and `--storage`."""
    parser = commands.add_parser(name, help=help, description=description)
    parser.set_defaults(handler=handler)
    parser.add_argument("spec", help="spec file (a bare name such as smoke.yaml is looked up in search_spaces/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any spec field; KEY is dotted, list items by index, VALUE is YAML "
        "(--set training.epochs=2 --set datasets.0.synthetic_num_train=64 --set 'setups=[baseline]')",
    )
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<working dir>/mlflow.db)")
    parser.add_argument("--storage", help="where Ray keeps results and checkpoints: a folder (default: runs/) or s3://bucket/prefix")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator",
        description="Ablation orchestrator for CLIP prompt learning: runs a spec's grid of trials on "
        "Ray Tune (Optuna inside each cell if asked), logs them to MLflow, resumes after a crash.",
        epilog="Start with: python -m orchestrator run smoke.yaml",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_spec_commands(commands)
    _add_store_commands(commands)
    return parser


def _add_spec_commands(commands) -> None:
    """The commands that read a spec: run, validate, describe, cache, tune-packing."""

    run = _add_spec_command(
        commands,
        "run",
        _run,
        help="run (or resume) every trial of a spec",
        description="Validate the spec, then run every trial on Ray Tune and log it to MLflow. Running "
        "the same command again resumes: finished trials are kept, unfinished ones continue from "
        "their checkpoints.",
    )
    run.add_argument("--address", help="join a running Ray cluster (e.g. auto or 10.0.0.1:6379) instead of local Ray")
    run.add_argument(
        "--fresh",
        action="store_true",
        help="start over: delete this spec's results folder, Optuna studies and MLflow runs",
    )
    _add_spec_command(
        commands,
        "validate",
        _validate,
        help="check a spec and report every problem",
        description="Check a spec (fields, cross-field rules, dataset layouts) and list every problem, "
        "one line each: <file>: <field>: <message>. Exit code 2 if there are any.",
    )
    describe = _add_spec_command(
        commands,
        "describe",
        _describe,
        help="show trials, trainable parameters per setup, fused groups, cost and output paths, without running",
        description="How many cells and trials a spec has, the trainable parameters and memory of each setup on "
        "its backbone, how its trials are fused in groups, what they cost (from a measured --profile), and "
        "where results, MLflow runs and cached features go. Runs nothing.",
    )
    describe.add_argument("--devices", type=_positive, metavar="N", help="the trial slots (GPUs) to group and cost for (default: this machine's)")
    describe.add_argument("--profile", type=Path, metavar="FILE", help="a benchmarks.gpu_check or benchmarks.fused --json JSON to estimate the cost from")
    cache = _add_spec_command(
        commands,
        "cache",
        _cache,
        help="fill the frozen-feature cache ahead of a run",
        description="Encode every image a spec's trials will read with the frozen backbone, once per "
        "(dataset, backbone, feature mode), with a progress bar: here, or on a Ray cluster's GPUs (--address).",
    )
    cache.add_argument("--address", help="encode on the GPU nodes of this Ray cluster (e.g. auto or 10.0.0.1:6379)")
    packing = _add_spec_command(
        commands,
        "tune-packing",
        _tune_packing,
        help="measure how many trials should share one GPU",
        description="Run 1, 2, 4 and 8 trial processes of the spec's heaviest setup on this machine's GPU at once, "
        "each keeping the features its share of the GPU allows, and print the total images/s, the peak memory "
        "and the resources.gpus_per_trial to use. Fills the feature cache first if needed.",
    )
    packing.add_argument("--processes", default="1,2,4,8", help="trial processes sharing the device (default: 1,2,4,8)")
    packing.add_argument("--seconds", type=float, default=30.0, help="seconds of training each packing is measured over")


def _add_store_commands(commands) -> None:
    """The commands that read the tracking store: table, status, ui."""
    table = commands.add_parser(
        "table",
        help="tables and plots of finished runs from MLflow",
        description="Read the finished trial runs of an experiment from MLflow and print or save "
        "tables and plots.",
    )
    from orchestrator.report import table as table_command

    table_command.configure_parser(table)
    table.set_defaults(handler=_table)

    status = commands.add_parser(
        "status",
        help="finished, running, failed and pending trials of an experiment",
        description="Count an experiment's trials by state from MLflow (pending: the launched spec's "
        "trials that have no run yet) and list the running and failed ones, with why each failed.",
    )
    status.add_argument("experiment", help="an MLflow experiment name, or the spec file that made it")
    status.add_argument("--tracking-uri", help="MLflow tracking URI (default: the spec's, else $MLFLOW_TRACKING_URI or ./mlflow.db)")
    status.set_defaults(handler=_status)

    ui = commands.add_parser(
        "ui",
        help="open the MLflow UI on the run store",
        description="Start `mlflow ui` on the tracking store of a spec (or of the working directory).",
    )
    ui.add_argument("spec", nargs="?", help="spec whose tracking URI to open (default: the working directory's store)")
    ui.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=argparse.SUPPRESS)
    ui.add_argument("--tracking-uri", help="tracking URI to open (default: sqlite:///<working dir>/mlflow.db)")
    ui.add_argument("--storage", help=argparse.SUPPRESS)
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    ui.add_argument("--port", type=int, default=5000, help="port to listen on (default: 5000)")
    ui.set_defaults(handler=_ui)


def main(argv: list[str] | None = None) -> int:
    from orchestrator import interrupt

    interrupt.install(sys.argv[1:] if argv is None else argv)
    try:
        try:
            args = build_parser().parse_args(argv)
            return args.handler(args)
        except UserInputError as error:
            for line in str(error).splitlines():
                print(f"error: {line}", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM (orchestrator.interrupt): one line, no traceback
            interrupt.stopping()
            print(interrupt.line(), file=sys.stderr, flush=True)
            return interrupt.exit_code()
        finally:
            sys.stdout.flush()  # a closed pipe shows here rather than at interpreter exit
    except BrokenPipeError:
        # The reader went away (`... | head`): exit quietly. Python flushes stdout again at exit, so
        # it is pointed at devnull first (the recipe of the `signal` docs, "Note on SIGPIPE").
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
