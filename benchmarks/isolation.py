"""What isolation costs: the shipped zoo in this process, in one worker process (--isolate),
in one worker with a timeout watched (--timeout), and in two workers, side by side in one run.

    python benchmarks/isolation.py [--specs specs] [--repeat 1]

Prints wall time per configuration and its ratio to the run in this process, and checks
that every configuration gives the same verdicts and figures (the JSON reports, less the
durations). Each configuration is a fresh `python -m specgrad validate` process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {
    "in process (-j 1)": ["-j", "1"],
    "one worker (-j 1 --isolate)": ["-j", "1", "--isolate"],
    "one worker, --timeout 600": ["-j", "1", "--timeout", "600"],
    "two workers (-j 2)": ["-j", "2"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", default=str(Path(__file__).resolve().parent.parent / "specs"))
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration (the best is kept)")
    args = parser.parse_args()
    times: dict[str, float] = {}
    checks: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, flags in CONFIGS.items():
            report = Path(tmp) / "r.json"
            best = float("inf")
            for _ in range(args.repeat):
                start = time.perf_counter()
                proc = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "specgrad",
                        "validate",
                        args.specs,
                        "-q",
                        "--json",
                        str(report),
                        *flags,
                    ],
                    capture_output=True,
                    text=True,
                    env={**os.environ},
                )
                best = min(best, time.perf_counter() - start)
                if proc.returncode not in (0, 1):
                    print(proc.stdout[-2000:], proc.stderr[-2000:])
                    return proc.returncode
            times[label] = best
            doc = json.loads(report.read_text())
            checks[label] = [{k: v for k, v in c.items() if k != "duration_s"} for c in doc["checks"]]
    base = times[next(iter(CONFIGS))]
    print(f"{'configuration':32s} {'wall s':>8s} {'ratio':>7s}")
    for label, t in times.items():
        print(f"{label:32s} {t:8.1f} {t / base:7.2f}")
    same = all(c == checks[next(iter(CONFIGS))] for c in checks.values())
    print(f"{len(checks[next(iter(CONFIGS))])} checks; identical in every configuration: {same}")  # type: ignore[arg-type]
    print(f"cores: {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
