"""Worker processes that survive the code they run.

A check runs other people's code: it may hang, segfault, abort or call os._exit. Each
worker is a spawned process joined to this one by a pipe; it runs one case plan at a time
and says, as it goes, which checks it is working on (`runner.Observer`) and each result as
it finishes. This process waits on every worker's pipe and on its process sentinel at
once, so it learns of a death the moment it happens, and of a step that outlives its time
limit when the deadline passes: that worker is killed (SIGKILL: a hung native call ignores
anything gentler). Either way the job's finished checks are kept, the checks in progress
are reported (ERROR with the signal, or TIMEOUT), the plan's checks not yet started are
ERROR "not run", and a fresh worker takes the next job.

Workers ignore SIGINT and SIGTERM: Ctrl-C reaches the whole process group, and it is this
process that decides what an interrupt means (stop, keep what finished, write the reports);
it kills the workers on its way out, and on Linux a worker is killed when this process dies
(PR_SET_PDEATHSIG), so none outlives a run.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import time
import traceback
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from specgrad.compile import CasePlan
from specgrad.errors import SpecIssue
from specgrad.process import deferred_signals
from specgrad.results import CheckResult, Status
from specgrad.schedule import Queue

#: the thread-count variables of the BLAS and OpenMP runtimes numpy and cupy link against
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)

#: seconds between an idle worker's looks at the other workers' queues (schedule.Queue)
STEAL_INTERVAL = 0.25

#: what each kind of death most likely was, for the message
_CAUSES = {
    "SIGSEGV": "a segmentation fault: a crash in native code",
    "SIGBUS": "a bus error: a crash in native code",
    "SIGABRT": "an abort: a failed assertion in native code, or abort()",
    "SIGFPE": "a floating-point trap in native code",
    "SIGILL": "an illegal instruction in native code",
    "SIGKILL": "killed from outside: out of memory (the kernel's OOM killer), or kill -9",
}


@dataclass(frozen=True)
class Outcome:
    """What one job (or, assembled, one spec) came to: its results, and what stopped it,
    if anything: a spec error binding its callables, an internal error."""

    results: list[CheckResult]
    error: tuple[SpecIssue, ...] | None = None
    internal: str | None = None
    contained: bool = False  # the error stops one implementation of several, not the spec

    @property
    def stopped(self) -> bool:
        return bool((self.error and not self.contained) or self.internal)


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    slot: int = 0  # which bin of the schedule it works through
    warm: set[str] = field(default_factory=set)  # what it has loaded (schedule.Unit.needs)
    key: Hashable | None = None
    plan: CasePlan | None = None
    step: tuple[str, tuple[str, ...]] | None = None
    since: float = 0.0  # when the current step began (this process's monotonic clock)
    at_least: float = 0.0  # seconds the current step gets whatever the timeout
    streamed: list[CheckResult] = field(default_factory=list)

    def deadline(self) -> float | None:
        if self.plan is None or self.plan.timeout is None or self.step is None:
            return None
        return self.since + max(self.plan.timeout, self.at_least)


class Pool:
    """Up to `size` workers, started on demand, one per slot of a schedule. `run` hands
    the queue's units out as workers become free and yields (key, outcome) as each
    finishes; a unit's payload is (job, plan), `job` what the worker function takes,
    `plan` the parent's copy (its targets and timeout)."""

    def __init__(self, size: int, work: Any, share: int | None = None) -> None:
        self.size, self.work = size, work
        self.share = share or size  # processes on this machine sharing its memory (budget)
        self.workers: list[_Worker] = []
        self._saved: dict[str, str | None] = {}

    def __enter__(self) -> Pool:
        # spawned workers read the environment at start: one BLAS thread each
        from specgrad.budget import WORKERS_VARIABLE

        self._saved = {v: os.environ.get(v) for v in (*THREAD_VARIABLES, WORKERS_VARIABLE)}
        for v in THREAD_VARIABLES:
            os.environ[v] = "1"
        os.environ[WORKERS_VARIABLE] = str(self.share)  # they share the default memory limit
        return self

    def __exit__(self, *exc: object) -> None:
        with deferred_signals():  # a second Ctrl-C must not leave a worker alive
            for w in self.workers:
                _stop(w)
            self.workers = []
        for v, value in self._saved.items():
            if value is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = value

    def run(self, queue: Queue) -> Iterator[tuple[Hashable, Outcome]]:
        while queue or any(w.key is not None for w in self.workers):
            self._hand_out(queue)
            busy = [w for w in self.workers if w.key is not None]
            deadlines = [d for w in busy if (d := w.deadline()) is not None]
            if queue and len(busy) < self.size:  # an idle worker may steal as time goes by
                deadlines.append(time.monotonic() + STEAL_INTERVAL)
            pause = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            wait([w.conn for w in busy] + [w.process.sentinel for w in busy], pause)
            for w in busy:
                finished = self._collect(w)
                if finished is not None:
                    queue.finished(w.slot)
                    yield finished
                elif not w.process.is_alive():
                    queue.finished(w.slot)
                    yield self._lose(w, Status.ERROR, _death(w.process))
                elif (d := w.deadline()) is not None and time.monotonic() >= d:
                    assert w.plan is not None and w.plan.timeout is not None
                    source = (
                        "its spec's timeout:"
                        if w.plan.spec.timeout is not None
                        else "--timeout or [tool.specgrad] timeout"
                    )
                    limit = max(w.plan.timeout, w.at_least)
                    queue.finished(w.slot)
                    yield self._lose(w, Status.TIMEOUT, f"took longer than {limit:g} s ({source})")

    def in_flight(self) -> Iterator[tuple[Hashable, Outcome]]:
        """After an interrupt: each job that was running, with the results it sent so far
        (or its whole outcome, where it came back in the meantime)."""
        for w in self.workers:
            if w.key is not None:
                key, streamed = w.key, list(w.streamed)
                finished = self._collect(w)
                yield finished if finished is not None else (key, Outcome(streamed))

    def _hand_out(self, queue: Queue) -> None:
        """A unit to every free slot that has one coming (a worker started where needed)."""
        for slot in range(self.size):
            worker = next((w for w in self.workers if w.slot == slot), None)
            if worker is not None and worker.key is not None:
                continue
            busy = any(w.key is not None for w in self.workers)
            unit = queue.take(slot, worker.warm if worker else set(), time.monotonic(), force=not busy)
            if unit is None:
                continue
            if worker is None or not worker.process.is_alive():
                if worker is not None:  # it died between jobs
                    _stop(worker)
                    self.workers.remove(worker)
                worker = _start(self.work, slot)
                self.workers.append(worker)
            job, plan = unit.payload
            worker.key, worker.plan, worker.step, worker.streamed = unit.key, plan, None, []
            worker.since = time.monotonic()
            worker.warm |= unit.needs
            try:
                worker.conn.send(job)
            except (OSError, ValueError):  # it died between jobs: the unit goes first again
                worker.key = worker.plan = None
                _stop(worker)
                self.workers.remove(worker)
                queue.give_back(slot, unit)

    def _collect(self, w: _Worker) -> tuple[Hashable, Outcome] | None:
        """Read what the worker sent; (key, outcome) if its job came back."""
        try:
            while w.conn.poll():
                kind, *payload = w.conn.recv()
                if kind == "step":
                    w.step, w.since = (payload[0], tuple(payload[1])), time.monotonic()
                    w.at_least = float(payload[2])
                elif kind == "result":
                    w.streamed.append(payload[0])
                elif kind == "done":
                    key = w.key
                    w.key = w.plan = w.step = None
                    return key, payload[0]
        except (EOFError, OSError):  # it died: the sentinel tells how
            w.process.join(1.0)
        return None

    def _lose(self, w: _Worker, status: Status, cause: str) -> tuple[Hashable, Outcome]:
        """The outcome of a job whose worker died or was stopped; the worker is replaced."""
        assert w.plan is not None
        key, plan, step, streamed = w.key, w.plan, w.step, w.streamed
        _stop(w)
        self.workers.remove(w)
        return key, Outcome(lost_results(plan, streamed, step, status, cause))


def lost_results(
    plan: CasePlan,
    streamed: Sequence[CheckResult],
    step: tuple[str, tuple[str, ...]] | None,
    status: Status,
    cause: str,
    after: str = "; the run went on in a fresh worker",
) -> list[CheckResult]:
    """A plan's results when its worker died or was stopped (`cause`, e.g. "was killed by
    SIGSEGV"): those finished, then `status` for the checks being worked on (all of them
    if no step had begun), then ERROR "not run" for the rest."""
    done = {r.target: r for r in streamed}
    label, working = step if step is not None else ("the case's setup", plan.targets)
    how = "the worker was stopped" if status is Status.TIMEOUT else "the worker"
    why = f"{label} {cause}: {how}" if status is Status.TIMEOUT else f"{how} {cause} during {label}"
    why += after
    out = []
    for target in plan.targets:
        if target in done:
            out.append(done[target])
        elif target in working:
            out.append(plan.result(target, status, why))
        else:
            out.append(plan.result(target, Status.ERROR, f"not run: {why}"))
    return out


def _death(process: BaseProcess) -> str:
    """How a worker died, as "was killed by SIGSEGV (a segmentation fault ...)"."""
    process.join(1.0)
    code = process.exitcode
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        cause = _CAUSES.get(name, "")
        return f"was killed by {name}" + (f" ({cause})" if cause else "")
    return f"exited with status {code} (os._exit, or exit() in native code)"


def _start(work: Any, slot: int = 0) -> _Worker:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_main, args=(child, work), name="specgrad-worker")
    # the worker starts with Ctrl-C and SIGTERM blocked (a signal to the process group while
    # it imports must not print its traceback); _main unblocks them once they are ignored
    blocked = hasattr(signal, "pthread_sigmask")
    if blocked:  # inherited through exec; the signal still reaches this process, after start()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        process.start()
    finally:
        if blocked:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    child.close()
    return _Worker(process, parent, slot)


def _stop(w: _Worker) -> None:
    if w.process.is_alive():
        w.process.kill()
    w.process.join(5.0)
    w.conn.close()


# -- in the worker --------------------------------------------------------------------------


class Recorder:
    """runner.Observer over the pipe; it also keeps the job's step and results, for an
    exception no check caught (a BaseException from the layer's code)."""

    def __init__(self, conn: Connection | None) -> None:
        self.conn = conn  # None: kept here only (a plan run in the caller's own process)
        self.current: tuple[str, tuple[str, ...]] | None = None
        self.results: list[CheckResult] = []

    def step(self, label: str, targets: tuple[str, ...], at_least: float = 0.0) -> None:
        self.current = (label, targets)
        if self.conn is not None:
            self.conn.send(("step", label, targets, at_least))

    def result(self, result: CheckResult) -> None:
        self.results.append(result)
        if self.conn is None:
            return
        try:
            self.conn.send(("result", result))
        except Exception:  # noqa: BLE001 - one that cannot be pickled comes back with the rest
            pass

    def begin(self) -> None:
        self.current, self.results = None, []


def _main(conn: Connection, work: Any) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _ignore)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the parent
        except (OSError, AttributeError):
            pass
    observer = Recorder(conn)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        observer.begin()
        outcome = work(job, observer)
        try:
            conn.send(("done", outcome))
        except Exception as exc:  # noqa: BLE001 - e.g. a result that cannot be pickled
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            conn.send(("done", Outcome([], internal=f"a worker's result could not come back: {detail}")))


def _ignore(signum: int, frame: object) -> None:
    """Workers leave interrupts to the parent (a handler, unlike SIG_IGN, is not inherited
    by processes the user's code starts)."""
