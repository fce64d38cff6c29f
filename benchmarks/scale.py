"""Scaling out: the shipped zoo, and a synthetic suite of a few hundred specs made from it,
with -j 1, -j 2, a Dask LocalCluster of 2 workers, and 2 CI shards, side by side in one run.

    python benchmarks/scale.py [--copies 15] [--suites zoo,synthetic] [--frameworks] [--json scale.json]

Each configuration is a fresh `python -m specgrad validate` process. The 2 shards are
timed one after the other, each with -j 1, as two one-core CI runners would run them: the
matrix's wall time is the slower shard's (plus `specgrad merge`, timed too); the balance
is the faster shard's time over the slower's. Every configuration must give the -j 1
run's checks, verdicts and figures (the merged report for the shards); the run fails
otherwise. Last, cost.py's estimate is set against the measured time per spec (Pearson
correlation of the logarithms, and the worst misestimates), which is what the
partition's balance rests on.

The synthetic suite: the zoo's numpy spec files (specs/*.yaml; with --frameworks, the
torch and jax ones under specs/frameworks too) copied `--copies` times under new names
(NAME_sK) with other seeds, so inputs differ and nothing is cached between copies: 20
files x 15 = 300 specs by default.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONFIGS: dict[str, list[str]] = {
    "-j 1": ["-j", "1"],
    "-j 2": ["-j", "2"],
    "dask LocalCluster, 2 workers": ["--executor", "dask", "-j", "2"],
}


def validate(specs: Path, report: Path, flags: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "specgrad", "validate", str(specs), "-q", "--json", str(report), *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    took = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(
            f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    return took, proc.returncode


def checks(report: Path) -> dict[str, Any]:
    return {
        c["id"]: {k: v for k, v in c.items() if k != "duration_s"}
        for c in json.loads(report.read_text())["checks"]
    }


def synthetic(copies: int, into: Path, frameworks: bool) -> Path:
    """The zoo's spec files, `copies` times, under new names and seeds."""
    zoo = ROOT / "specs"
    for source in sorted(zoo.rglob("*.yaml") if frameworks else zoo.glob("*.yaml")):
        relative = source.relative_to(ROOT / "specs")
        text = source.read_text()
        for k in range(copies):
            target = into / relative.parent / f"{source.stem}_s{k}.yaml"
            target.parent.mkdir(parents=True, exist_ok=True)
            renamed = re.sub(r"^name:\s*(\S+)", lambda m: f"name: {m[1]}_s{k}", text, count=1, flags=re.M)
            # a base it extends: the same copy of it
            renamed = re.sub(r"^(extends:\s*\S+)\.yaml", rf"\1_s{k}.yaml", renamed, flags=re.M)
            if re.search(r"^seed:", renamed, flags=re.M):
                renamed = re.sub(r"^seed:\s*\d+", f"seed: {1000 + k}", renamed, count=1, flags=re.M)
            else:
                renamed += f"\nseed: {1000 + k}\n"
            target.write_text(renamed)
    for helper in (ROOT / "specs").rglob("*.py"):  # layers some specs keep beside them
        shutil.copy(helper, into / helper.relative_to(ROOT / "specs"))
    return into


def run_suite(name: str, specs: Path, tmp: Path) -> dict[str, Any]:
    rows: dict[str, float] = {}
    reference: dict[str, Any] = {}
    same = True
    for label, flags in CONFIGS.items():
        report = tmp / f"{name}-{_slug(label)}.json"
        rows[label], _ = validate(specs, report, flags)
        got = checks(report)
        if label == "-j 1":
            reference = got
        same &= got == reference
        print(f"  {label:34s} {rows[label]:8.1f} s", flush=True)
    shard_times = []
    for k in (1, 2):
        t, _ = validate(specs, tmp / f"{name}-shard{k}.json", ["-j", "1", "--shard", f"{k}/2"])
        shard_times.append(t)
    start = time.perf_counter()
    merged = tmp / f"{name}-merged.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "specgrad",
            "merge",
            *(str(tmp / f"{name}-shard{k}.json") for k in (1, 2)),
            "-q",
            "--json",
            str(merged),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    merge_time = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"merge exited {proc.returncode}: {proc.stderr[-2000:]}")
    same &= checks(merged) == reference
    label = "2 shards, -j 1 each (slower + merge)"
    rows[label] = max(shard_times) + merge_time
    print(
        f"  {label:34s} {rows[label]:8.1f} s  (shards {shard_times[0]:.1f} and {shard_times[1]:.1f} s, "
        f"merge {merge_time:.1f} s)",
        flush=True,
    )
    return {
        "checks": len(reference),
        "specs": len({c["spec"] for c in reference.values()}),
        "wall_s": rows,
        "ratio": {k: v / rows["-j 1"] for k, v in rows.items()},
        "shard_balance": min(shard_times) / max(shard_times),
        "identical": same,
        "estimate": estimate_fit(specs, tmp / f"{name}-{_slug('-j 1')}.json"),
    }


def _slug(label: str) -> str:
    return re.sub(r"\W+", "_", label).strip("_")


def estimate_fit(specs: Path, report: Path) -> dict[str, Any]:
    """cost.py's estimate per spec against the -j 1 run's measured time per spec."""
    from specgrad.cli import discover
    from specgrad.compile import compile_spec
    from specgrad.cost import estimate
    from specgrad.validate import parse_spec

    measured: dict[str, float] = {}
    for c in json.loads(report.read_text())["checks"]:
        measured[c["spec"]] = measured.get(c["spec"], 0.0) + c["duration_s"]
    estimated: dict[str, float] = {}
    for file, _ in discover([specs]):
        spec = parse_spec(file)
        if not spec.abstract:
            for plan in compile_spec(spec):
                estimated[plan.spec.name] = estimated.get(plan.spec.name, 0.0) + estimate(plan).seconds
    names = [n for n in measured if measured[n] > 0 and estimated.get(n, 0) > 0]
    xs = [math.log(estimated[n]) for n in names]
    ys = [math.log(measured[n]) for n in names]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    r = cov / math.sqrt(sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys))
    off = sorted(names, key=lambda n: -abs(math.log(estimated[n] / measured[n])))[:5]
    return {
        "correlation_of_logs": r,
        "estimated_s": sum(estimated.values()),
        "measured_s": sum(measured.values()),
        "worst": {n: {"estimated_s": estimated[n], "measured_s": measured[n]} for n in off},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--copies", type=int, default=15, help="copies of each zoo spec in the synthetic suite"
    )
    parser.add_argument("--suites", default="zoo,synthetic")
    parser.add_argument(
        "--frameworks", action="store_true", help="the synthetic suite copies torch/jax specs too"
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"cores: {cores}")
    out: dict[str, Any] = {"cores": cores, "suites": {}}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        suites = {"zoo": ROOT / "specs"}
        if "synthetic" in args.suites:
            suites["synthetic"] = synthetic(args.copies, tmp / "synthetic", args.frameworks)
        for name, specs in suites.items():
            if name not in args.suites:
                continue
            print(f"{name}:", flush=True)
            out["suites"][name] = found = run_suite(name, specs, tmp)
            print(
                f"  {found['checks']} checks in {found['specs']} specs; identical in every configuration: "
                f"{found['identical']}; shard balance {found['shard_balance']:.2f}"
            )
            fit = found["estimate"]
            print(
                f"  estimate vs measured per spec: correlation of logs {fit['correlation_of_logs']:.2f}, "
                f"{fit['estimated_s']:.1f} s estimated, {fit['measured_s']:.1f} s measured in checks"
            )
    print()
    print(f"{'suite':10s} {'configuration':38s} {'wall s':>8s} {'ratio to -j 1':>14s}")
    for name, found in out["suites"].items():
        for label, t in found["wall_s"].items():
            print(f"{name:10s} {label:38s} {t:8.1f} {found['ratio'][label]:14.2f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0 if all(s["identical"] for s in out["suites"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
