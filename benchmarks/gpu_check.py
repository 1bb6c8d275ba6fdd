"""Every figure a GPU machine should give, in one command, within about 8 minutes on one H100.

    python -m benchmarks.gpu_check [--out DIR] [--quick]

In order, each in a process of its own with a time limit, all within `--budget-s` (480 s; a step
that fails or runs out of time is recorded as such, and the check goes on):

1. `cuda_tests`: `pytest -m cuda tests/test_gpu.py` (skipped without CUDA);
2. `step`: one training step of each setup, the reference-style path, this project's eager step
   and, on CUDA, its step as one CUDA graph (`benchmarks.trial_step`, RN101 at 448 px, batch 32);
3. `fused`: a fused group of 1 and 8 members against the same trials apart, cached and online
   (`benchmarks.fused`), which is also the profile `describe --profile` reads;
4. `loop`: the real trial loop, eager and graphed, the feature fill's images/s and 1, 2 and 4
   trial processes sharing the device (`benchmarks.gpu_trial`);
5. `cost`: `grid_full.yaml`'s training time on one device, fused and unfused, extrapolated from (3)
   (`describe grid_full.yaml --profile`; `smoke.yaml`'s with `--quick`).

It writes `gpu_check.json` (every step's figures; its `fused` part is a profile) and
`gpu_check.md` (the headline figures as a table) to a folder it names (default
`runs/gpu_check/<device>-<time>`). `--quick` runs every step small (RN-tiny at 64 px, a few
steps), which a CPU finishes in a few minutes (`tests/test_benchmarks.py` keeps it working).
Random weights and generated images: the cost does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from trainables.devices import device_name, trial_device

REPO = Path(__file__).resolve().parent.parent

FULL = {"model": "RN101", "image_size": "448", "batch": "32"}
QUICK = {"model": "RN-tiny", "image_size": "64", "batch": "8"}


def steps(quick: bool, workdir: Path) -> dict[str, tuple[list[str], int]]:
    """Each step's command (run with this Python) and its time limit in seconds."""
    size = QUICK if quick else FULL
    common = ["--model", size["model"], "--image-size", size["image_size"], "--batch", size["batch"]]
    quick_only = (lambda *args: list(args) if quick else [])
    return {
        "cuda_tests": (["-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", str(REPO / "tests" / "test_gpu.py")], 120),
        "step": (["-m", "benchmarks.trial_step", *common, "--steps", "2" if quick else "20", "--blocks", "1" if quick else "3",
                  *quick_only("--setups", "baseline"), "--json", str(workdir / "step.json")], 120),
        "fused": (["-m", "benchmarks.fused", *common, "--members", "2" if quick else "1,8", "--steps", "2" if quick else "10",
                   *quick_only("--workers", "0", "--modes", "cached"), "--json"], 150),
        "loop": (["-m", "benchmarks.gpu_trial", *common, "--train", "40" if quick else "2048", "--test", "16" if quick else "512",
                  "--processes", "1" if quick else "1,2,4", "--seconds", "1" if quick else "10", "--workdir", str(workdir / "loop"),
                  *quick_only("--workers", "0", "--setups", "baseline,dual_coop"), "--json", str(workdir / "loop.json")], 180),
    }  # fmt: skip


def run_step(name: str, command: list[str], limit: int, workdir: Path) -> dict:
    """Run one step; its figures (from its JSON), its seconds, and how it ended."""
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True, text=True, timeout=limit,
                              env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"status": f"ran past its {limit} s", "seconds": limit}
    outcome = {"seconds": time.perf_counter() - started, "status": "ok" if done.returncode == 0 else f"exit {done.returncode}"}
    if done.returncode != 0:
        outcome["error"] = (done.stderr or done.stdout).strip().splitlines()[-20:]
    elif name == "cuda_tests":
        outcome["summary"] = done.stdout.strip().splitlines()[-1]
    elif name == "fused":
        outcome["figures"] = json.loads(done.stdout)
    else:
        outcome["figures"] = json.loads((workdir / f"{name}.json").read_text())
    return outcome


def grid_cost(spec: str, profile: Path) -> list[str]:
    """`describe SPEC --profile` on one device: the cost lines."""
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "describe", spec, "--profile", str(profile), "--devices", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    lines = done.stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Cost from")), None)
    if done.returncode != 0 or start is None:
        return [f"not estimated: {(done.stderr or done.stdout).strip().splitlines()[-1:]}"]
    return [line for line in lines[start:] if line.startswith(("Cost from", "  "))][:6]


def markdown(report: dict) -> str:
    """The headline figures as one table."""
    rows = [("device", report["device"]), ("torch", report["torch"])]
    for name, outcome in report["steps"].items():
        if outcome["status"] != "ok":
            rows.append((name, f"{outcome['status']} after {outcome['seconds']:.0f} s"))
    checked = report["steps"]
    if "summary" in checked["cuda_tests"]:
        rows.append(("pytest -m cuda", checked["cuda_tests"]["summary"]))
    for entry in checked["step"].get("figures", {}).get("summary", []):
        graphed = f", graphed {1000 * entry['graphed_s']:.2f}" if "graphed_s" in entry else ""
        rows.append((f"step ms, {entry['setup']}", f"reference {1000 * entry['reference_s']:.1f}, eager {1000 * entry['project_s']:.2f}{graphed}"))
    loop = checked["loop"].get("figures", {})
    for row in loop.get("trials", []):
        rows.append((f"real loop, {row['setup']}{' graphed' if row['cuda_graph'] else ''}",
                     f"{row['step_ms']:.2f} ms/step, COCO trial {row['coco_trial_min']:.1f} min"))  # fmt: skip
    if loop:
        rows.append(("feature fill", f"{loop['fill_images_per_s']:.0f} images/s"))
        rows += [(f"packing {k}", f"{v['images_per_s']:.0f} train images/s, {v['peak_gib']:.2f} GiB each") for k, v in loop["packing"].items()]
    for row in checked["fused"].get("figures", {}).get("rows", []):
        rows.append((f"fused {row['mode']} K={row['members']}",
                     f"{row['fused_member_images_per_s']:.1f} member-images/s ({row['speedup']:.2f}x apart), group step "
                     f"{row['shared_ms'] + sum(row['member_ms']):.1f} ms, peak {row['fused_peak_gib']:.2f} GiB"))  # fmt: skip
    rows += [("cost", line.strip()) for line in report.get("cost", [])]
    table = ["| check | figure |", "|---|---|"] + [f"| {a} | {b.replace('|', '/')} |" for a, b in rows]
    return "\n".join([f"# gpu_check on {report['device']} ({'quick' if report['quick'] else 'full'})", "", *table, ""])


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="the folder to write to (default: runs/gpu_check/<device>-<time>)")
    parser.add_argument("--budget-s", type=int, default=480, help="seconds for every step together (each has its own limit too)")
    parser.add_argument("--quick", action="store_true", help="every step small (RN-tiny at 64 px): a CPU runs it in minutes")
    args = parser.parse_args(argv)
    device = device_name(trial_device("auto"))
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device).strip("-").lower()
    out = (args.out or REPO / "runs" / "gpu_check" / f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}").absolute()
    out.mkdir(parents=True, exist_ok=True)
    report = {"device": device, "torch": torch.__version__, "quick": args.quick, "steps": {}}
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as folder:
        workdir = Path(folder)
        deadline = time.monotonic() + args.budget_s
        for name, (command, limit) in steps(args.quick, workdir).items():
            left = int(deadline - time.monotonic())
            if left < 10:
                report["steps"][name] = {"status": f"not run: the {args.budget_s} s budget was spent", "seconds": 0}
                continue
            print(f"{name}: {' '.join(command)}", file=sys.stderr, flush=True)
            report["steps"][name] = run_step(name, command, min(limit, left), workdir)
            print(f"  {report['steps'][name]['status']} in {report['steps'][name]['seconds']:.0f} s", file=sys.stderr, flush=True)
    fused = report["steps"]["fused"].get("figures")
    if fused is not None:
        report["fused"] = fused  # the profile `describe --profile` reads
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
        report["cost"] = grid_cost("smoke.yaml" if args.quick else "grid_full.yaml", out / "gpu_check.json")
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    print(f"Wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    return out


if __name__ == "__main__":
    main()
