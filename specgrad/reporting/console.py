"""Terminal report: a table per spec, located failure details, and the closing count line.

Rich renders the tables; colour and width follow the terminal, and piped output (CI) is
plain text with a fixed width so logs stay greppable. The last line is always exactly
`N passed, M failed` (`, K skipped` when there are skips).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable
from itertools import groupby
from typing import IO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from specgrad.errors import SpecIssue
from specgrad.results import CheckResult, RunSummary, Status

_STYLE = {
    Status.PASS: "green",
    Status.FAIL: "bold red",
    Status.ERROR: "bold magenta",
    Status.SKIP: "yellow",
    Status.TIMEOUT: "bold magenta",
}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"


def _ratio(value: float) -> str:
    return f"{value:.2g}" if value < 100 else f"{value:.1e}"


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """The reader of stdout left (`| head`): print nothing more, but let the run finish
        and its reports be written; rich's default exits with 1, a failure code."""
        self.quiet = True
        os.dup2(os.open(os.devnull, os.O_WRONLY), self.file.fileno())


class ConsoleReporter:
    def __init__(self, stream: IO[str] | None = None, verbosity: int = 0) -> None:
        stream = stream or sys.stdout
        tty = stream.isatty()
        self.console = _Console(
            file=stream,
            width=None if tty else 160,
            no_color=not tty,
            force_terminal=tty,  # piped or in CI: plain text, whatever FORCE_COLOR says
            highlight=False,
            emoji=False,
            soft_wrap=not tty,
        )
        self.verbosity = verbosity
        self.bar: ProgressBar | None = None

    def progress(self, total: int) -> ProgressBar:
        """A live progress bar over `total` checks, on a terminal only (it appears once the
        run has taken PROGRESS_DELAY seconds and is gone when it ends); elsewhere a no-op."""
        self.bar = ProgressBar(self.console if self.console.is_terminal else None, total)
        return self.bar

    def advance(self, checks: int, now: str = "") -> None:
        if self.bar is not None:
            self.bar.advance(checks, now)

    def _line(self, text: str, style: str | None = None) -> None:
        self.console.print(Text(text, style=style or ""), soft_wrap=True)

    def spec_errors(self, issues: Iterable[SpecIssue]) -> None:
        for issue in issues:
            self._line(f"{issue}", "red")

    def spec_results(self, results: list[CheckResult]) -> None:
        """One spec's table and failure details (called as each spec finishes)."""
        if not results:
            return
        bad = [r for r in results if r.status.bad]
        if self.verbosity >= 0:
            unavailable = [
                r
                for r in results
                if r.status is Status.SKIP and r.note.startswith(("implementation ", "device ", "on device "))
            ]
            shown = [
                r
                for r in results
                if self.verbosity > 0
                or ((r.kind != "contract" or r.status is not Status.PASS) and r not in unavailable)
            ]
            contract = results[0].spec.partition("@")[0]
            self.console.print(self._table(shown, contract, title=f"{contract}  ({results[0].file})"))
            passed = len(results) - len(shown) - (0 if self.verbosity > 0 else len(unavailable))
            if passed:
                self._line(f"  + {passed} contract checks passed (-v lists them)", "dim")
            if unavailable and self.verbosity <= 0:
                self._line(
                    f"  + {len(unavailable)} checks skipped: implementations or devices not run "
                    "(see the notes)",
                    "dim",
                )
            for note in dict.fromkeys(r.note for r in results if r.note):
                self._line(f"  note: {note}", "yellow")
        self._details(bad)
        if self.verbosity >= 0:
            self.console.print()

    def _table(self, shown: list[CheckResult], spec: str, title: str) -> Table:
        """Rows of a derived spec (NAME.second_order) show its suffix before the target; a
        spec with several implementations has a column naming each row's, a run on another
        device than the CPU one naming the device (device.X rows: the reference device)."""
        table = Table(title=Text(title, style="bold"), title_justify="left", show_edge=False, pad_edge=False)
        several = any("@" in r.spec for r in shown)
        # err/bound: the worst element's error over its bound (the check's margin: < 1 inside)
        columns = ["implementation"] if several else []
        devices = any(r.device != "cpu" or r.target.startswith("device.") for r in shown)
        columns += ["check", "dtype", "case", *(["device"] if devices else [])]
        columns += ["max abs err", "max rel err", "noise floor", "err/bound"]
        columns.append("status")
        if self.verbosity > 0:
            columns += ["kinks", "method", "numerical in"]
        for col in columns:
            numeric = col.startswith(("max", "noise", "err", "kinks"))
            table.add_column(col, justify="right" if numeric else "left")
        for r in shown:
            c = r.comparison
            own, _, impl = r.spec.partition("@")
            row = [Text(impl or "-")] if several else []
            row += [
                Text(r.target if own == spec else f"{own.removeprefix(spec + '.')}.{r.target}"),
                Text(r.dtype),
                Text(r.case),
                *([Text(_device(r))] if devices else []),
                Text(_fmt(c.max_abs_err if c else None)),
                Text(_fmt(c.max_rel_err if c else None)),
                Text(_fmt(c.noise_floor if c and r.kind != "agreement" else None)),
                Text(_ratio(c.worst_ratio) if c else "-"),
                Text(str(r.status), style=_STYLE[r.status]),
            ]
            if self.verbosity > 0:
                row += [
                    Text(str(r.kinks) if r.kinks else "-"),
                    Text(r.method or "-"),
                    Text(r.numerical_dtype or "-"),
                ]
            table.add_row(*row)
        return table

    def _details(self, bad: list[CheckResult]) -> None:
        """Each failure once; checks of one case failing for the same reason share a block."""
        key = lambda r: (r.file, r.spec, r.device, r.dtype, r.case, r.status, r.message)
        for _, group in groupby(bad, key=key):
            first, *rest = failure_text(list(group)).splitlines()
            self._line(first, _STYLE[Status(first.split()[0])])
            for line in rest:
                self._line(line)

    def closing(self, summary: RunSummary) -> None:
        for note in summary.notes:
            self._line(f"note: {note}", "dim")
        if not (summary.results or summary.spec_errors or summary.internal_errors or summary.interrupted):
            self._line("no checks selected (see -k, --dtype and each spec's dtypes and cases)", "yellow")
        if summary.interrupted:
            by = "SIGTERM" if summary.signal == 15 else "Ctrl-C"
            self._line(f"interrupted ({by}): the results above are the checks that finished", "yellow")
        if summary.spec_errors:
            self._line(f"{len(summary.spec_errors)} spec error(s)", "red")
        self.console.print(Text(summary.closing_line()), soft_wrap=True)


#: a run shorter than this shows no progress bar at all
PROGRESS_DELAY = 0.5


class ProgressBar:
    """rich's Progress, started from a timer so quick runs never draw it; the reporter's
    lines print above it while it runs. Thread-safe to start and stop."""

    def __init__(self, console: Console | None, total: int) -> None:
        self.console, self.total = console, total
        self.done = 0
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._timer: threading.Timer | None = None

    def __enter__(self) -> ProgressBar:
        if self.console is not None and self.total:
            self._timer = threading.Timer(PROGRESS_DELAY, self._start)
            self._timer.daemon = True
            self._timer.start()
        return self

    def _start(self) -> None:
        with self._lock:
            if self._timer is None:  # stopped meanwhile
                return
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("checks"),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self._task = self._progress.add_task("checking", total=self.total, completed=self.done)
            self._progress.start()

    def advance(self, checks: int, now: str = "") -> None:
        with self._lock:
            self.done += checks
            if self._progress is not None and self._task is not None:
                self._progress.update(self._task, completed=self.done, description=now or "checking")

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._progress is not None:
                self._progress.stop()
                self._progress = None


def failure_text(results: list[CheckResult]) -> str:
    """The located report of checks of one case that failed for the same reason: what the
    console prints, the pytest plugin's failure report and the JUnit failure text."""
    r = results[0]
    more = "".join(f", ::{o.target}" for o in results[1:])
    where = "" if r.device == "cpu" else f", device {r.device}"
    lines = [f"{r.status} {r.check_id}{more}", f"  {r.where}: {r.spec} [{r.dtype}, case {r.case}{where}]"]
    lines += [f"  {line}" for line in r.message.splitlines()]
    return "\n".join(lines)


def _device(r: CheckResult) -> str:
    """Where the check ran; a device agreement row names both devices."""
    other = r.target.removeprefix("device.")
    return f"{r.device} vs {other}" if other != r.target else r.device
