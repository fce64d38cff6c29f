"""The `specgrad` command: parse -> build the pipeline -> execute -> exit code.

Exit codes: 0 every selected check passed; 1 a check failed, errored or timed out; 2 a
spec or the command line is invalid (takes precedence); 3 internal error in specgrad
itself; 5 nothing selected; 130 interrupted (Ctrl-C) or 143 (SIGTERM), after reporting the
checks that finished; 141 the output pipe closed.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import traceback
from collections.abc import Sequence
from dataclasses import replace
from itertools import groupby
from pathlib import Path

from specgrad import __version__
from specgrad.compile import CasePlan, compile_spec
from specgrad.config import MAX_TIMEOUT, Config, parse_size
from specgrad.errors import Location, SpecError, SpecIssue, UsageError
from specgrad.model import Spec
from specgrad.numerics.tolerance import FLOAT_DTYPES
from specgrad.parallel import cores
from specgrad.process import (
    Terminated,
    deferred_signals,
    one_blas_thread,
    pending_signal,
    sigterm_interrupts,
    tune_allocator,
)
from specgrad.reporting.console import ConsoleReporter
from specgrad.reporting.json_report import JsonReporter
from specgrad.results import EXIT_INTERNAL, CheckResult, RunSummary
from specgrad.select import Matcher, compile_expression

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a killed pipe writer


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage; normalise its code to 2
        return 0 if exc.code == 0 else 2
    try:
        with sigterm_interrupts():
            return int(args.func(args))
    except KeyboardInterrupt as exc:  # before a run started, or a command without one
        print("specgrad: interrupted", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
    except BrokenPipeError:  # `specgrad list ... | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except UsageError as exc:
        print(f"specgrad: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the CLI never shows a raw traceback by default
        print(
            f"specgrad: internal error: {type(exc).__name__}: {exc} "
            "(set SPECGRAD_DEBUG=1 for the traceback; please report it)",
            file=sys.stderr,
        )
        if os.environ.get("SPECGRAD_DEBUG"):
            traceback.print_exc()
        return EXIT_INTERNAL


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specgrad",
        description="Gradient checks for hand-written layer backward passes, from YAML specs.",
        epilog="exit codes: 0 all selected checks passed, 1 a check failed, errored or timed out, "
        "2 invalid spec or command line, 3 internal error, 5 nothing selected, 130 interrupted "
        "(Ctrl-C), 143 terminated (SIGTERM), 141 output pipe closed",
    )
    parser.add_argument("--version", action="version", version=f"specgrad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sources = argparse.ArgumentParser(add_help=False)
    sources.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the pyproject.toml whose [tool.specgrad] to use (default: the nearest one with that "
        "table, from the current folder up); command-line flags win over it",
    )
    sources.add_argument(
        "--from-package",
        action="append",
        default=[],
        metavar="NAME",
        help="also the specs an installed package ships (entry point group specgrad.specs)",
    )
    common = argparse.ArgumentParser(add_help=False, parents=[sources])
    common.add_argument("paths", nargs="*", type=Path, help="spec files or folders (recursive)")
    select = argparse.ArgumentParser(add_help=False)
    select.add_argument(
        "-k",
        dest="keyword",
        metavar="EXPR",
        help="select checks whose id matches: words, and/or/not, parentheses",
    )
    select.add_argument(
        "--dtype",
        action="append",
        metavar="DTYPE",
        help="only these of each spec's dtypes (repeat or comma-separate)",
    )
    select.add_argument("--seed", type=_seed, help="override every spec's seed (0 to 2**32-1)")
    select.add_argument(
        "--mode",
        choices=MODES,
        help="default: every element, perturbed in groups where the Jacobian's structure allows "
        "(declared or detected); fast: seeded projections <grad, d>, two forward calls each, any "
        "size, not a per-element verdict; per-element: every element alone (no structure)",
    )
    select.add_argument("--fast", action="store_true", help="the same as --mode fast")
    select.add_argument(
        "--device",
        metavar="DEVICE",
        help="where the checks run: cpu (numpy), gpu (cupy), both (each, and the CPU/GPU agreement "
        "check device.gpu), sim (numpy under cupy's rules: GPU readiness on a CPU), or a comma "
        "list; default: each spec's device:, else cpu",
    )
    select.add_argument(
        "--max-memory",
        type=_size,
        metavar="SIZE",
        help="memory one check may take, e.g. 512M or 2G: a check estimated to need more is refused "
        "(ERROR) before it runs (default: half the memory available when it starts); no dense "
        "Jacobian is ever built",
    )
    select.add_argument(
        "--max-elements",
        type=_positive,
        metavar="N",
        help="check at most N elements per tensor (a stratified sample, recorded in the report)",
    )

    p = sub.add_parser("validate", parents=[common, select], help="run the gradient checks")
    p.add_argument("--json", type=Path, metavar="FILE", help="write a JSON report")
    p.add_argument(
        "--junit-xml", type=Path, metavar="FILE", help="write a JUnit XML report (a testcase per check)"
    )
    p.add_argument(
        "--html",
        type=Path,
        metavar="FILE",
        help="write a self-contained HTML report, with heatmaps of where each failing gradient is "
        "wrong (needs matplotlib: pip install 'specgrad[html]')",
    )
    p.add_argument("--fail-fast", "-x", action="store_true", help="stop at the first failure")
    p.add_argument(
        "-j",
        "--jobs",
        type=_positive,
        metavar="N",
        help="worker processes (default: the machine's cores; 1 runs in this process); "
        "results are the same for any N",
    )
    p.add_argument(
        "--executor",
        choices=("local", "dask"),
        help="where checks run: local worker processes (default), or a Dask cluster "
        "(--scheduler; without it, a local Dask cluster of -j workers); needs specgrad[dask]",
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="the Dask scheduler to submit checks to, e.g. tcp://10.0.0.5:8786 (implies --executor dask)",
    )
    p.add_argument(
        "--shard",
        type=_shard,
        metavar="K/N",
        help="run part K of N of the selected checks (a CI matrix of N jobs, K = 1..N, covers "
        "each check once, parts balanced by estimated cost); specgrad merge joins their reports",
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="stop a check that takes longer (reported as TIMEOUT; a spec's timeout: wins); "
        "checks then run in worker processes",
    )
    p.add_argument(
        "--isolate",
        action="store_true",
        default=None,
        help="run checks in worker processes with -j 1 too (a crash in user code is that "
        "check's ERROR, not the end of the run); always so with more than one worker",
    )
    p.add_argument("-q", "--quiet", action="count", default=0, help="only failures and the count")
    p.add_argument("-v", "--verbose", action="count", default=0, help="every check, with noise floors")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "merge",
        help="join the reports of several runs (the shards of --shard K/N) into one, with one exit code",
        description="Join JSON or JUnit reports (validate --json/--junit-xml; both kinds may be mixed) "
        "into one report and one exit code, as one run would have given. Shards must all be there, "
        "once each, from the same selection.",
    )
    p.add_argument("reports", nargs="+", type=Path, metavar="REPORT", help="JSON or JUnit XML reports")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the merged JSON report")
    p.add_argument("--junit-xml", type=Path, metavar="FILE", help="write the merged JUnit XML report")
    p.add_argument("--html", type=Path, metavar="FILE", help="write the merged HTML report (no heatmaps)")
    p.add_argument("-q", "--quiet", action="count", default=0, help="only failures and the count")
    p.add_argument("-v", "--verbose", action="count", default=0, help="every check")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("lint", parents=[common], help="check specs against the schema; imports nothing")
    p.set_defaults(func=cmd_lint)

    p = sub.add_parser("list", parents=[common, select], help="print the compiled check ids")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "explain",
        parents=[sources],
        help="run one check again and print everything about it",
        description="Run one check again (its id as `specgrad list` or a report prints it) and print "
        "how its inputs were filled, the step, the tolerance, its figures and the worst elements.",
    )
    p.add_argument("check_id", metavar="CHECK_ID", help="e.g. 'conv2d[float32,random]::w' (quote it)")
    p.add_argument(
        "paths",
        nargs="*",
        type=Path,
        help="spec files or folders to look in (default: the configuration's, else .)",
    )
    p.add_argument("--top", type=_positive, default=10, metavar="N", help="worst elements listed (10)")
    p.add_argument("--seed", type=_seed, help="override the spec's seed (as validate --seed did)")
    p.add_argument("--mode", choices=MODES, help="as validate --mode (default: the spec's method)")
    p.add_argument("--fast", action="store_true", help="the same as --mode fast")
    p.add_argument("--max-elements", type=_positive, metavar="N", help="as validate --max-elements")
    p.add_argument("--max-memory", type=_size, metavar="SIZE", help="as validate --max-memory")
    p.add_argument("--timeout", type=_seconds, metavar="SECONDS", help="as validate --timeout")
    p.add_argument("--isolate", action="store_true", default=None, help="as validate --isolate")
    p.set_defaults(func=cmd_explain, device=None, jobs=None, dtype=None)

    p = sub.add_parser(
        "new",
        help="write a commented spec for a layer (it passes `specgrad lint`)",
        description="Write a commented spec from a few flags, e.g. specgrad new conv2d --forward "
        "mylayers.conv:forward --backward mylayers.conv:backward --input x=1,3,8,8 --param w=4,3,3,3",
    )
    p.add_argument("name", metavar="NAME", help="the layer's name: the first part of every check id")
    p.add_argument("--forward", required=True, metavar="MOD:FN", help="forward's import string")
    p.add_argument(
        "--backward", required=True, metavar="MOD:FN", help="backward's import string (or autograd)"
    )
    p.add_argument(
        "--input", action="append", default=[], metavar="NAME=SHAPE", help="an input, e.g. x=1,3,8,8 (repeat)"
    )
    p.add_argument(
        "--param", action="append", default=[], metavar="NAME=SHAPE", help="a parameter, e.g. w=4,3,3,3"
    )
    p.add_argument(
        "--attr", action="append", default=[], metavar="NAME=VALUE", help="a keyword argument, e.g. stride=2"
    )
    p.add_argument("--dtype", action="append", metavar="DTYPE", help="dtypes (default float32,float64)")
    p.add_argument("--convention", choices=("functional", "cached"), default="functional")
    p.add_argument("--framework", default="numpy", help="numpy (default), torch, jax, cupy")
    p.add_argument("--description", default="", help="what the layer computes")
    p.add_argument("-o", "--output", type=Path, metavar="FILE", help="where to write it (default NAME.yaml)")
    p.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    p.set_defaults(func=cmd_new)

    p = sub.add_parser("schema", help="print the spec JSON Schema (for editors and other tools)")
    p.set_defaults(func=cmd_schema)
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds (a number), got {text!r}") from None
    if not 0 < value <= MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(f"expected seconds > 0 and <= {MAX_TIMEOUT} (a week), got {text}")
    return value


def _shard(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected K/N such as 1/4 (part K of N), got {text!r}")
    index, count = int(match[1]), int(match[2])
    if not 1 <= index <= count:
        raise argparse.ArgumentTypeError(f"expected K/N with 1 <= K <= N, got {text!r}")
    return index, count


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{value} is outside 0 to 2**32-1")
    return value


def spec_paths(args: argparse.Namespace) -> list[tuple[Path, bool]]:
    """The spec files the command line names (its paths and the --from-package folders),
    else the configuration's `paths`."""
    from specgrad.packages import spec_folder

    paths = [*args.paths, *(spec_folder(name) for name in args.from_package)]
    if not paths:
        paths = list(args.settings.paths)
    if not paths:
        raise UsageError(
            "give spec files or folders, or --from-package NAME (or set paths in [tool.specgrad])"
        )
    return discover(paths)


def configure(args: argparse.Namespace) -> Config:
    """Load [tool.specgrad] and fill in what the command line left unset: flags win."""
    from specgrad import config as project

    try:
        settings = project.load(args.config) if args.config else project.load()
    except SpecError as exc:
        raise UsageError("invalid configuration:\n" + "\n".join(map(str, exc.issues))) from None
    args.settings = settings
    settings.use_import_roots()
    unset = {
        "dtype": [",".join(settings.dtypes)] if settings.dtypes else None,
        "device": settings.device,
        "seed": settings.seed,
        "jobs": settings.jobs,
        "max_memory": settings.max_memory,
        "max_elements": settings.max_elements,
        "timeout": settings.timeout,
        "isolate": settings.isolate,
        "executor": settings.executor,
        # a scheduler set for the project, unless this command line asks for local workers
        "scheduler": settings.scheduler if getattr(args, "executor", None) != "local" else None,
    }
    for name, value in unset.items():
        if hasattr(args, name) and getattr(args, name) is None and value is not None:
            setattr(args, name, value)
    if hasattr(args, "mode") and args.mode is None and not args.fast and settings.mode:
        args.mode = settings.mode
    return settings


def discover(paths: Sequence[Path]) -> list[tuple[Path, bool]]:
    """(file, named explicitly) for the spec files under `paths`: *.yaml / *.yml,
    recursively, skipping hidden folders."""
    found: list[tuple[Path, bool]] = []
    for path in paths:
        if path.is_file():
            found.append((path, True))
        elif path.is_dir():
            found.extend(
                (p, False)
                for p in sorted(path.rglob("*"))
                if p.suffix in (".yaml", ".yml")
                and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        else:
            raise UsageError(f"{path}: no such file or folder")
    if not found:
        raise UsageError(f"no spec files (*.yaml, *.yml) under {', '.join(map(str, paths))}")
    explicit: dict[Path, bool] = {}
    for p, named in found:
        explicit[p] = explicit.get(p, False) or named
    return list(explicit.items())


def _dtypes(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    out = [d.strip() for v in values for d in v.split(",") if d.strip()]
    for d in out:
        if d not in FLOAT_DTYPES:
            raise UsageError(f"--dtype {d!r}: expected one of {', '.join(FLOAT_DTYPES)}")
    return out


def _load(
    files: list[tuple[Path, bool]],
    summary: RunSummary,
    reporter: ConsoleReporter | None,
    settings: Config | None = None,
) -> list[Spec]:
    """Parse every file; errors are collected, never raised. A YAML file found by walking a
    folder that has no top-level `specgrad:` key is not a spec and is skipped with a note."""
    from specgrad.validate import parse_spec

    specs: dict[str, Spec] = {}
    bases: list[Spec] = []
    for file, named in files:
        try:
            if not named and not _looks_like_spec(file):
                summary.notes.append(f"skipped {file}: no top-level 'specgrad:' key, not a spec")
                continue
            spec = parse_spec(file, settings)
            if spec.abstract:  # a base: valid, checked only as part of the specs extending it
                bases.append(spec)
                continue
            if spec.name in specs:  # check ids would collide
                first = specs[spec.name].name_location
                raise SpecError.at(
                    spec.name_location,
                    "name",
                    f"spec name '{spec.name}' is already used by {first}; check ids must be unique",
                )
            specs[spec.name] = spec
        except SpecError as exc:
            summary.spec_errors.extend(exc.issues)
            if reporter is not None:
                reporter.spec_errors(exc.issues)
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the other specs
            _internal(summary, reporter, file, "reading", exc)
    return [*specs.values(), *bases]


_SPEC_KEY = re.compile(r"^specgrad[ \t]*:", re.MULTILINE)


def _looks_like_spec(file: Path) -> bool:
    """A top-level `specgrad:` key, read off the text: a YAML file of another tool (custom
    tags, a list at the top, invalid YAML) is skipped without being parsed."""
    try:
        return _SPEC_KEY.search(file.read_text(encoding="utf-8", errors="replace")) is not None
    except OSError:
        return True  # unreadable: let parse_spec report it, located


def _internal(
    summary: RunSummary, reporter: ConsoleReporter | None, file: Path, doing: str, exc: BaseException
) -> None:
    detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    issue = SpecIssue(
        Location(file),
        "",
        f"internal error while {doing} this spec (please report "
        f"it; SPECGRAD_DEBUG=1 shows the traceback): {detail}",
    )
    summary.internal_errors.append(issue)
    if reporter is not None:
        reporter.spec_errors([issue])
    if os.environ.get("SPECGRAD_DEBUG"):
        traceback.print_exception(exc)


def _plans(spec: Spec, args: argparse.Namespace, matcher: Matcher | None) -> tuple[CasePlan, ...]:
    return compile_spec(
        spec,
        dtypes=_dtypes(args.dtype),
        seed=args.seed,
        select=matcher,
        mode=_mode(args),
        max_elements=args.max_elements,
        max_memory=args.max_memory,
        devices=_devices(args),
        timeout=getattr(args, "timeout", None),
    )


def _devices(args: argparse.Namespace, usable: bool = False) -> tuple[str, ...] | None:
    """The --device devices; with `usable`, each one checked (DeviceUnavailable, exit 2)."""
    if args.device is None:
        return None
    from specgrad.backends import backend, parse_devices

    devices = parse_devices(args.device)
    for device in devices if usable else ():
        backend(device)
    return devices


def _size(text: str) -> int:
    size = parse_size(text)
    if size is None:
        raise argparse.ArgumentTypeError(f"expected a size such as 512M or 2G, got {text!r}")
    return size


#: --mode choices
MODES = ("default", "fast", "per-element")


def _mode(args: argparse.Namespace) -> str | None:
    if args.fast and args.mode not in (None, "fast"):
        raise UsageError(f"--fast and --mode {args.mode} contradict each other")
    return "fast" if args.fast else args.mode


def cmd_validate(args: argparse.Namespace) -> int:
    tune_allocator()
    configure(args)
    if args.scheduler and args.executor == "local":
        raise UsageError("--scheduler is the Dask scheduler's address: it goes with --executor dask")
    if args.scheduler:
        args.executor = "dask"
    files = spec_paths(args)
    matcher = compile_expression(args.keyword) if args.keyword else None
    _dtypes(args.dtype)
    _devices(args, usable=True)
    for option, path in _reports(args):
        _check_report_path(option, path, [f for f, _ in files])
    reporter = ConsoleReporter(verbosity=args.verbose - args.quiet)
    summary = RunSummary()
    results: list[CheckResult] = []
    try:
        loaded = _load(files, summary, reporter, args.settings)
        planned = [(spec, _plans(spec, args, matcher)) for spec in loaded]
        planned = [(spec, plans) for spec, plans in planned if plans]
        if args.shard:
            from specgrad.parallel import shard

            every = [p.check_id(t) for _, plans in planned for p in plans for t in p.targets]
            summary.positions = {check_id: i for i, check_id in enumerate(every)}
            planned, summary.shard = shard(planned, *args.shard)
            if not planned and summary.shard.checks:
                summary.notes.append(
                    f"shard {summary.shard} got no checks: the selection has fewer case plans than shards"
                )
        _frameworks(planned, summary)
        asked = args.jobs or cores()
        workers = min(asked, sum(len(plans) for _, plans in planned))
        timed = any(p.timeout is not None for _, plans in planned for p in plans)
        isolated = asked > 1 or bool(args.isolate) or timed or args.executor == "dask"
        total = sum(len(p.targets) for _, plans in planned for p in plans)
        with reporter.progress(total):
            if isolated and workers:
                _run_parallel(planned, args, workers, summary, reporter)
            with one_blas_thread():
                for spec, plans in planned if not isolated else ():
                    results = []
                    _run_one(spec, plans, summary, reporter, args.fail_fast, results)
                    with deferred_signals():
                        summary.results.extend(results)
                        reporter.spec_results(results)
                        results = []
                    if args.fail_fast and any(r.status.bad for r in summary.results):
                        break
    except KeyboardInterrupt as exc:
        _interrupted(summary, exc)
        try:
            with deferred_signals():
                summary.results.extend(results)  # the interrupted spec's finished checks
                reporter.spec_results(results)
        except KeyboardInterrupt:
            pass  # a second signal: the run is stopping already
    try:
        with deferred_signals():  # a signal now waits: the reports are written whole
            _finish(args, summary, reporter)
    except KeyboardInterrupt as exc:
        _interrupted(summary, exc)
        print("interrupted while writing the reports: they are complete", file=sys.stderr)
    return summary.exit_code


def _interrupted(summary: RunSummary, exc: KeyboardInterrupt) -> None:
    summary.interrupted = True
    summary.signal = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT


def _finish(args: argparse.Namespace, summary: RunSummary, reporter: ConsoleReporter) -> None:
    """What follows the checks: notes, the closing lines, the reports."""
    _describe_devices(summary)
    if summary.shard is not None:  # whether merge may expect every check of the shard
        stopped = args.fail_fast and any(r.status.bad for r in summary.results)
        lost = summary.interrupted or stopped or summary.spec_errors or summary.internal_errors
        summary.shard = replace(summary.shard, complete=not lost)
    if "sim" in (_devices(args) or ()):
        summary.notes.append(
            "device sim is numpy under cupy's rules: it tells whether the layers and the engine are "
            "ready for cupy (no implicit conversion to numpy, no host arrays mixed in, no numpy-only "
            "functions); its results are numpy's, not a GPU's. torch and jax bindings get CPU tensors "
            "there: where their own tensors live on a GPU is not checked"
        )
    if _mode(args) == "fast":
        summary.notes.append(
            "fast mode: each gradient was checked along seeded directions (two forward calls each), "
            "not element by element: a PASS says it is right along those directions, a FAIL that it is "
            "wrong somewhere; the contracts that take calls of their own (backward_deterministic, "
            "zero_upstream, layout, taylor) were left out. Run without --mode fast for a per-element "
            "verdict"
        )
    if args.html and any(r.evidence is not None for r in summary.results):
        from specgrad.reporting.heatmap import unavailable

        if unavailable():
            summary.notes.append(f"--html: {unavailable()}")
    reporter.closing(summary)
    _write_reports(args, summary)


def _reports(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """(option, path) of each report asked for."""
    # the HTML first: Ctrl-C while it draws makes the run interrupted, which the others then say
    asked = (("--html", args.html), ("--json", args.json), ("--junit-xml", args.junit_xml))
    return [(option, path) for option, path in asked if path is not None]


def _write_reports(args: argparse.Namespace, summary: RunSummary) -> None:
    """Every report asked for, each atomically (a temp file renamed into place); one that
    cannot be written does not stop the others."""
    from specgrad.reporting.html_report import HtmlReporter
    from specgrad.reporting.junit_report import JunitReporter

    writers: dict[str, type[JsonReporter | JunitReporter | HtmlReporter]] = {
        "--json": JsonReporter,
        "--junit-xml": JunitReporter,
        "--html": HtmlReporter,
    }
    failed = []
    for option, path in _reports(args):
        if pending_signal():  # arrived while an earlier report was written: this one says so
            summary.interrupted, summary.signal = True, pending_signal() or signal.SIGINT
        writer = writers[option](path)
        pictures = writer.pictures(summary) if isinstance(writer, HtmlReporter) else 0
        if pictures > 3:
            print(f"drawing {pictures} heatmaps for {path} ...", file=sys.stderr)
        try:
            writer.write(summary)
        except OSError as exc:
            failed.append(f"{option} {path}: cannot write the report: {exc}")
        if isinstance(writer, HtmlReporter) and writer.interrupted:
            # exit 130 (143); the report holds the pictures drawn so far
            summary.interrupted, summary.signal = True, pending_signal() or signal.SIGINT
            print(
                f"interrupted while drawing {path}'s pictures: it is written with those drawn",
                file=sys.stderr,
            )
    if failed:
        raise UsageError("; ".join(failed))


def _describe_devices(summary: RunSummary) -> None:
    """What each device the checks ran on is (a GPU's name), for the reports."""
    from specgrad.backends import backend, unavailable

    used = {r.device for r in summary.results}
    used |= {r.target.removeprefix("device.") for r in summary.results if r.target.startswith("device.")}
    for device in sorted(used):
        if not unavailable(device):
            summary.devices[device] = backend(device).describe()


def _frameworks(planned: list[tuple[Spec, tuple[CasePlan, ...]]], summary: RunSummary) -> None:
    """Which framework versions each spec runs with (and was verified with, where it says)."""
    from specgrad.frameworks import versions

    differ: dict[tuple[str, str, str], list[str]] = {}
    for spec, _ in planned:
        used = [s.framework for s in spec.implementations or (spec,)]
        found = versions(used, spec.verified_with)
        summary.frameworks[spec.name] = found
        for name, v in found.items():
            verified, installed = v["verified_with"], v["installed"]
            if verified is not None and installed is not None and installed != verified:
                differ.setdefault((name, verified, installed), []).append(spec.name)
    for (name, verified, installed), names in differ.items():
        summary.notes.append(
            f"verified with {name} {verified}, checked with {name} {installed}: {', '.join(names)}"
        )


def _check_report_path(option: str, path: Path, specs: list[Path]) -> None:
    """Refuse an unwritable report path before running anything, not after, and never
    overwrite a spec (`--json a.yaml b.yaml` is an easy slip)."""
    if path.suffix in (".yaml", ".yml") or any(path.resolve() == s.resolve() for s in specs):
        raise UsageError(
            f"{option} {path}: refusing to write the report over a spec file "
            f"(the option takes the report's path: {option} report{_SUFFIX[option]})"
        )
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a folder, expected a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot create its folder: {exc}") from None
    if not os.access(path.parent, os.W_OK):
        raise UsageError(f"{option} {path}: folder {path.parent} is not writable")


_SUFFIX = {"--json": ".json", "--junit-xml": ".xml", "--html": ".html"}


def _run_one(
    spec: Spec,
    plans: tuple[CasePlan, ...],
    summary: RunSummary,
    reporter: ConsoleReporter,
    fail_fast: bool,
    results: list[CheckResult],
) -> None:
    """Append one spec's results as they finish; an import failure is a located spec error."""
    from specgrad.runner import run_spec

    if not plans:
        return
    summary.specs_checked += 1
    partial = _Finished()
    try:
        for result in run_spec(spec, plans, observer=partial):
            partial.results.clear()  # the plan is done: its results come this way
            results.append(result)
            reporter.advance(1, spec.name)
            if fail_fast and result.status.bad:
                break
    except KeyboardInterrupt:
        results.extend(partial.results)  # the checks of the interrupted case that finished
        raise
    except SpecError as exc:
        summary.spec_errors.extend(exc.issues)
        reporter.spec_errors(exc.issues)
    except Exception as exc:  # noqa: BLE001 - a bug must not stop the other specs
        _internal(summary, reporter, spec.path, "checking", exc)
    except BaseException as exc:  # noqa: BLE001 - a layer's own BaseException (checks catch Exception)
        issue = SpecIssue(
            Location(spec.path),
            "",
            f"a callable raised {type(exc).__name__}, which is not an Exception: the spec's other "
            "checks were not run (--isolate reports it as the check's ERROR and goes on)",
        )
        summary.spec_errors.append(issue)
        reporter.spec_errors([issue])


class _Finished:
    """runner.Observer keeping the results of the case in progress (Ctrl-C keeps them)."""

    def __init__(self) -> None:
        self.results: list[CheckResult] = []

    def step(self, label: str, targets: tuple[str, ...], at_least: float = 0.0) -> None:
        pass

    def result(self, result: CheckResult) -> None:
        self.results.append(result)


def _run_parallel(
    planned: list[tuple[Spec, tuple[CasePlan, ...]]],
    args: argparse.Namespace,
    workers: int,
    summary: RunSummary,
    reporter: ConsoleReporter,
) -> None:
    """The specs' plans across `workers` processes (or a Dask cluster), reported spec by
    spec in order."""
    from specgrad.parallel import CompileOptions, Executor, Local, run_jobs
    from specgrad.workers import Outcome

    dtypes = _dtypes(args.dtype)
    options = CompileOptions(
        dtypes=tuple(dtypes) if dtypes is not None else None,
        seed=args.seed,
        keyword=args.keyword,
        mode=_mode(args),
        max_elements=args.max_elements,
        max_memory=args.max_memory,
        devices=_devices(args),
        timeout=args.timeout,
        config=args.settings,
    )
    executor: Executor = Local(workers, options)
    if args.executor == "dask":
        from specgrad.dask_executor import Dask

        roots = tuple(str(Path(r).resolve()) for r in args.settings.import_roots)
        executor = Dask(args.scheduler, workers, roots)

    def report(spec: Spec, outcome: Outcome) -> bool:
        summary.specs_checked += 1
        results = outcome.results
        failed = [i for i, r in enumerate(results) if r.status.bad]
        if args.fail_fast and failed:
            results = results[: failed[0] + 1]
        if outcome.error:
            summary.spec_errors.extend(outcome.error)
            reporter.spec_errors(list(outcome.error))
        if outcome.internal:
            _internal(summary, reporter, spec.path, "checking", RuntimeError(outcome.internal))
        summary.results.extend(results)
        reporter.spec_results(results)
        return not (args.fail_fast and failed)

    try:
        run_jobs(planned, executor, report, progress=reporter.advance)
    finally:
        summary.notes.extend(executor.notes)


def cmd_merge(args: argparse.Namespace) -> int:
    from specgrad.merge import merge
    from specgrad.reporting.reader import read_report

    for option, path in _reports(args):
        if any(path.resolve() == r.resolve() for r in args.reports):
            raise UsageError(f"{option} {path}: is one of the reports being merged; write to another file")
        _check_report_path(option, path, [])
    summary = merge([(path, read_report(path)) for path in args.reports])
    reporter = ConsoleReporter(verbosity=args.verbose - args.quiet)
    reporter.spec_errors(summary.spec_errors + summary.internal_errors)
    for _, results in groupby(summary.results, key=lambda r: r.spec):
        reporter.spec_results(list(results))
    with deferred_signals():
        reporter.closing(summary)
        _write_reports(args, summary)
    return summary.exit_code


def cmd_lint(args: argparse.Namespace) -> int:
    settings = configure(args)
    files = spec_paths(args)
    summary = RunSummary()
    reporter = ConsoleReporter()
    specs = _load(files, summary, reporter, settings)
    for spec in specs:
        if spec.abstract:
            print(f"ok {spec.path} ({spec.name}: abstract, a base for specs that extend it)")
            continue
        n = sum(len(p.targets) for p in compile_spec(spec))
        impls = f", {len(spec.implementations)} implementations" if spec.implementations else ""
        print(
            f"ok {spec.path} ({spec.name}: {len(spec.dtypes)} dtype(s) x {len(spec.cases)} "
            f"case(s){impls}, {n} checks)"
        )
    for note in summary.notes:
        print(f"note: {note}")
    bad = len({i.location.file for i in summary.spec_errors + summary.internal_errors})
    print(f"{len(specs)} spec(s) ok, {bad} invalid")
    return _static_exit(summary)


def cmd_list(args: argparse.Namespace) -> int:
    settings = configure(args)
    files = spec_paths(args)
    matcher = compile_expression(args.keyword) if args.keyword else None
    summary = RunSummary()
    specs = _load(files, summary, ConsoleReporter(stream=sys.stderr), settings)  # stdout: ids only
    for spec in specs:
        for plan in _plans(spec, args, matcher):
            for target in plan.targets:
                print(plan.check_id(target))
    return _static_exit(summary)


def cmd_explain(args: argparse.Namespace) -> int:
    from specgrad.explain import find_plan, report
    from specgrad.runner import Engines, run_plan

    settings = configure(args)
    if not args.paths and not args.from_package and not settings.paths:
        args.paths = [Path(".")]
    summary = RunSummary()
    specs = _load(spec_paths(args), summary, ConsoleReporter(stream=sys.stderr), settings)
    options = {
        "seed": args.seed,
        "mode": _mode(args),
        "max_elements": args.max_elements,
        "max_memory": args.max_memory,
        "timeout": args.timeout,
    }
    plan = find_plan(args.check_id, specs, **options)
    tune_allocator()
    if plan.timeout is not None or args.isolate:
        results, issues = _explain_in_a_worker(plan, args)
    else:
        with one_blas_thread():
            try:
                results, issues = run_plan(plan, Engines()), []
            except SpecError as exc:
                results, issues = [], list(exc.issues)
    if issues or not results:
        ConsoleReporter(stream=sys.stderr).spec_errors(issues)
        return 2
    print(report(plan, results[0], args.top))
    return 1 if results[0].status.bad else 0


def _explain_in_a_worker(
    plan: CasePlan, args: argparse.Namespace
) -> tuple[list[CheckResult], list[SpecIssue]]:
    """`explain`'s one check in a worker process (a timeout, or --isolate): a crash or a
    hang is its ERROR or TIMEOUT, as in `validate`."""
    from specgrad.parallel import CompileOptions, Local, run_jobs
    from specgrad.workers import Outcome

    target = plan.targets[0]
    devices: tuple[str, ...] | None = None  # as find_plan compiled it
    if plan.device != "cpu":
        devices = ("cpu", plan.device)
    elif target.startswith("device."):
        devices = ("cpu", target.removeprefix("device."))
    options = CompileOptions(
        seed=args.seed,
        mode=_mode(args),
        max_elements=args.max_elements,
        max_memory=args.max_memory,
        devices=devices,
        timeout=args.timeout,
        config=args.settings,
        only=plan.check_id(target),
    )
    got: list[Outcome] = []

    def keep(spec: Spec, outcome: Outcome) -> bool:
        got.append(outcome)
        return True

    run_jobs([(plan.spec, (plan,))], Local(1, options), keep)
    issues = [*got[0].error] if got and got[0].error else []
    if got and got[0].internal:
        issues.append(SpecIssue(Location(plan.spec.path), "", f"internal error: {got[0].internal}"))
    return (got[0].results if got else []), issues


def cmd_new(args: argparse.Namespace) -> int:
    from specgrad.reporting.atomic import write_atomic
    from specgrad.scaffold import Scaffold, parse_attr, parse_tensor, render

    scaffold = Scaffold(
        name=args.name,
        forward=args.forward,
        backward=args.backward,
        inputs=tuple(parse_tensor(t, "--input") for t in args.input),
        parameters=tuple(parse_tensor(t, "--param") for t in args.param),
        dtypes=tuple(_dtypes(args.dtype) or ("float32", "float64")),
        convention=args.convention,
        description=args.description,
        framework=args.framework,
        attrs=tuple(parse_attr(a) for a in args.attr),
    )
    text = render(scaffold)
    out: Path = args.output or Path(f"{args.name}.yaml")
    if out.exists() and not args.force:
        raise UsageError(f"{out} exists; --force overwrites it")
    if out.suffix not in (".yaml", ".yml"):
        raise UsageError(f"-o {out}: a spec file ends in .yaml or .yml (folders are searched for those)")
    try:
        write_atomic(out, text)
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc}") from None
    print(f"wrote {out}; next: specgrad lint {out}, then specgrad validate {out}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from specgrad.validate import schema_text

    sys.stdout.write(schema_text())
    return 0


def _static_exit(summary: RunSummary) -> int:
    """lint and list: 3 internal error, 2 an invalid spec, else 0."""
    return EXIT_INTERNAL if summary.internal_errors else 2 if summary.spec_errors else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
