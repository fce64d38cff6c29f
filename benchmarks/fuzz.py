"""The long fuzzing run of the spec loader and validator: `pytest tests/fuzz` with many
examples per test (the suite's own run takes a couple of hundred, in seconds).

    python benchmarks/fuzz.py [--examples 10000] [--strict] [--statistics] [-k EXPR]
                              [--json FILE]

--examples N   examples per property test (default 10,000)
--strict       a known bug (tests/fuzz/test_fuzz_specs.py KNOWN_BUGS) fails its test too,
               and hypothesis shrinks it to a minimal document
--statistics   also print hypothesis's own statistics (--hypothesis-show-statistics:
               phases, timings, the outcome of each example as an event)
-k EXPR        only the tests pytest's -k selects
--json FILE    also write the table (and the per-outcome counts) as JSON

It registers the hypothesis profile `fuzz` (fresh random examples each run, no deadline,
every health check off, N examples) and then runs pytest in this process with
HYPOTHESIS_PROFILE=fuzz: tests/conftest.py loads the profile named there, which exists
because it was registered first (set HYPOTHESIS_PROFILE=fuzz by hand for a plain pytest
run instead and conftest fails: it runs before the test module registers the profile;
SPECGRAD_FUZZ_EXAMPLES=N python -m pytest tests/fuzz is the plain way, with the suite's
deterministic examples). The test module counts every example it runs by outcome (a valid
spec, a located error, a known bug, a document skipped because a path in it would leave the
temporary folder) into the JSON file SPECGRAD_FUZZ_COUNTS names; this script prints them
per test with its time and pytest's outcome. Exit status: pytest's.

At 10,000 examples the run takes about ten minutes on two cores (some 33,000 examples: the
unsafe-tag test stops near 2,900, once hypothesis has tried every distinct document of its
small strategy).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest  # hypothesis is imported later: after pytest marks its plugins for assertion rewriting

REPO = Path(__file__).resolve().parent.parent


class Recorder:
    """A pytest plugin: registers the `fuzz` profile before tests/conftest.py loads the
    profile HYPOTHESIS_PROFILE names, and records each test's time (setup, call,
    teardown) and outcome."""

    def __init__(self, examples: int) -> None:
        self.examples = examples
        self.tests: dict[str, dict[str, Any]] = {}

    @pytest.hookimpl(tryfirst=True)
    def pytest_load_initial_conftests(self) -> None:
        from hypothesis import HealthCheck, settings

        settings.register_profile(
            "fuzz",
            max_examples=self.examples,
            deadline=None,
            derandomize=False,
            suppress_health_check=list(HealthCheck),
            print_blob=True,
        )

    def pytest_runtest_logreport(self, report: Any) -> None:
        entry = self.tests.setdefault(report.nodeid, {"seconds": 0.0, "outcome": "passed"})
        entry["seconds"] += report.duration
        xfail = hasattr(report, "wasxfail")
        if report.failed:
            entry["outcome"] = "failed" if report.when == "call" else f"error ({report.when})"
        elif report.skipped and report.when in ("setup", "call"):
            entry["outcome"] = "xfailed" if xfail else "skipped"
        elif report.passed and report.when == "call" and xfail:
            entry["outcome"] = "xpassed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=10_000, help="examples per test (default 10000)")
    parser.add_argument("--strict", action="store_true", help="known bugs fail too")
    parser.add_argument("--statistics", action="store_true", help="hypothesis's own statistics")
    parser.add_argument("-k", dest="select", default="", help="pytest -k expression")
    parser.add_argument("--json", type=Path, help="write the table here as JSON too")
    args = parser.parse_args(argv)

    os.chdir(REPO)
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory(prefix="specgrad-fuzz-counts-") as folder:
        counts_file = Path(folder) / "counts.json"
        os.environ.update(
            HYPOTHESIS_PROFILE="fuzz",
            SPECGRAD_FUZZ_EXAMPLES=str(args.examples),
            SPECGRAD_FUZZ_COUNTS=str(counts_file),
            SPECGRAD_FUZZ_STRICT="1" if args.strict else "0",
        )
        pytest_args = ["tests/fuzz", "-p", "no:benchmark", "-p", "no:xdist", "-q", "--tb=short"]
        pytest_args += ["-k", args.select] if args.select else []
        pytest_args += ["--hypothesis-show-statistics"] if args.statistics else []
        recorder = Recorder(args.examples)
        print(f"python -m pytest {' '.join(pytest_args)}  ({args.examples} examples per test)", flush=True)
        start = time.perf_counter()
        code = int(pytest.main(pytest_args, plugins=[recorder]))
        wall = time.perf_counter() - start
        counts: dict[str, dict[str, int]] = (
            json.loads(counts_file.read_text()) if counts_file.is_file() else {}
        )

    rows = []
    for nodeid, entry in recorder.tests.items():
        function = nodeid.split("::")[-1].split("[")[0]
        own = counts.get(function, {})
        rows.append(
            {
                "test": nodeid.split("::")[-1],
                "examples": sum(own.values()) if own else None,
                "valid": own.get("valid", 0),
                "located errors": own.get("error", 0),
                "known bugs": {k[6:]: v for k, v in own.items() if k.startswith("known:")},
                "skipped": sum(v for k, v in own.items() if k.startswith("skipped:")),
                "also": {k: v for k, v in counts.items() if k.startswith(f"{function}[")},
                "seconds": round(entry["seconds"], 1),
                "outcome": entry["outcome"],
            }
        )
    _print_table(rows, wall, code)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"examples": args.examples, "wall_seconds": round(wall, 1), "exit": code, "tests": rows},
                indent=2,
            )
        )
    return code


def _print_table(rows: list[dict[str, Any]], wall: float, code: int) -> None:
    print()
    header = f"{'test':<62} {'examples':>8} {'valid':>7} {'errors':>7} {'known':>6} {'skip':>5}"
    header += f" {'seconds':>8}  outcome"
    print(header)
    print("-" * len(header))
    for row in rows:
        if row["examples"] is None:  # not a fuzzing test (the known-bug regressions, the oracle)
            line = f"{row['test'][:62]:<62} {'':>8} {'':>7} {'':>7} {'':>6} {'':>5}"
        else:
            known = sum(row["known bugs"].values())
            line = (
                f"{row['test'][:62]:<62} {row['examples']:>8} {row['valid']:>7} "
                f"{row['located errors']:>7} {known:>6} {row['skipped']:>5}"
            )
        print(f"{line} {row['seconds']:>8.1f}  {row['outcome']}")
        for bug, n in sorted(row["known bugs"].items()):
            print(f"    known bug {bug}: {n}")
        for name, sub in sorted(row["also"].items()):
            print(f"    {name}: {', '.join(f'{k} {v}' for k, v in sorted(sub.items()))}")
    total = sum(r["examples"] or 0 for r in rows)
    print(f"\n{total} examples in {wall:.0f} s; pytest exit status {code}")


if __name__ == "__main__":
    sys.exit(main())
