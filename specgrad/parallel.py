"""Case plans across worker processes (-j N, --isolate, timeouts), results identical to a
run in one process.

A job is (spec file, how plans were compiled, the plan's check ids): picklable, and each
worker parses and compiles the spec itself (once per process), so no model object crosses
a process boundary (a Dask cluster, which may not see the files, gets plans pickled whole:
dask_executor.py). Plans are balanced between the workers by estimated cost (cost.py,
schedule.py: largest first, a spec's plans kept where its framework is loaded, stealing
what estimates got wrong); results are handed back per spec in the order of the specs and
of their plans, whatever order the jobs finish in.

Workers (`workers.Pool`) are spawned with the BLAS thread variables set to one thread
(every check runs on one BLAS thread, in process too: see `process`), so N workers use N
cores and a BLAS's thread-dependent sums never make figures depend on N. A worker that
dies or outlives a check's time limit takes only that job's unfinished checks with it.
"""

from __future__ import annotations

import hashlib
import os
import traceback
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from specgrad.compile import CasePlan
from specgrad.config import Config
from specgrad.cost import estimate, warmup
from specgrad.errors import Location, SpecError, SpecIssue
from specgrad.model import Spec
from specgrad.process import deferred_signals, one_blas_thread, tune_allocator
from specgrad.results import CheckResult, Shard, Status
from specgrad.schedule import Queue, Unit, partition
from specgrad.workers import Outcome, Pool, Recorder, lost_results

if TYPE_CHECKING:
    from specgrad.runner import Engines


@dataclass(frozen=True)
class CompileOptions:
    """What `compile_spec` was called with, in picklable form (-k as its expression)."""

    dtypes: tuple[str, ...] | None = None
    seed: int | None = None
    keyword: str | None = None
    mode: str | None = None
    max_elements: int | None = None
    max_memory: int | None = None
    devices: tuple[str, ...] | None = None
    timeout: float | None = None
    config: Config | None = None  # the project's [tool.specgrad]: its tolerances shape the specs
    only: str | None = None  # one check id (`explain`): its plan alone, keeping its evidence

    def plans(self, spec: Spec) -> tuple[CasePlan, ...]:
        from specgrad.compile import compile_spec
        from specgrad.select import compile_expression

        select = compile_expression(self.keyword) if self.keyword else None
        dtypes = list(self.dtypes) if self.dtypes is not None else None
        plans = compile_spec(
            spec,
            dtypes=dtypes,
            seed=self.seed,
            select=select,
            mode=self.mode,
            max_elements=self.max_elements,
            max_memory=self.max_memory,
            devices=self.devices,
            timeout=self.timeout,
        )
        if self.only is None:
            return plans
        return tuple(
            replace(p, targets=(t,), evidence=True)
            for p in plans
            for t in p.targets
            if p.check_id(t) == self.only
        )


@dataclass(frozen=True)
class Job:
    """A plan to run, by its spec file and check ids: the worker compiles the file itself."""

    path: str
    options: CompileOptions
    expect: tuple[str, ...] = ()  # the plan's check ids, as this process compiled it
    digest: str = ""  # the spec file's content when this process read it


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def units(specs: Sequence[tuple[Spec, tuple[CasePlan, ...]]]) -> list[Unit]:
    """A schedulable unit per plan, keyed (spec number, plan number), with its estimated
    cost; named by its first check id, so ties break the same way on every machine."""
    out = []
    for s, (_, plans) in enumerate(specs):
        for i, plan in enumerate(plans):
            c = estimate(plan)
            out.append(Unit((s, i), plan.check_id(plan.targets[0]), c.seconds, c.needs, plan.spec.name, plan))
    return out


def shard(
    specs: Sequence[tuple[Spec, tuple[CasePlan, ...]]], index: int, count: int
) -> tuple[list[tuple[Spec, tuple[CasePlan, ...]]], Shard]:
    """The plans of shard `index` (1-based) of `count`: the selection partitioned in cost
    balance (schedule.partition), the same on every machine that compiled the same plans.
    Its digest is of the whole partition (which check ids went to which shard), so shards
    that computed different ones (other flags, other spec files) never merge."""
    bins = partition(units(specs), count, warmup)
    placed = sorted(
        f"{b}\t{p.check_id(t)}"
        for b, found in enumerate(bins)
        for u in found.units
        for p in [u.payload]
        for t in p.targets
    )
    selection = hashlib.sha256("\n".join(placed).encode()).hexdigest()
    mine = {u.key for u in bins[index - 1].units}
    kept = [
        (spec, tuple(p for i, p in enumerate(plans) if (s, i) in mine))
        for s, (spec, plans) in enumerate(specs)
    ]
    return [(spec, plans) for spec, plans in kept if plans], Shard(index, count, len(placed), selection)


class Executor(Protocol):
    """Where plans run: this machine's worker pool (`Local`), or a Dask cluster
    (dask_executor.Dask). `run` yields (unit key, outcome) as each plan finishes; `notes`
    are what the run should say about how it went (workers lost, plans retried)."""

    notes: list[str]

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None: ...

    def run(self, units: list[Unit]) -> Iterator[tuple[Hashable, Outcome]]: ...

    def in_flight(self) -> Iterator[tuple[Hashable, Outcome]]:
        """After an interrupt: the plans that were running, with what they finished."""
        ...


class Local:
    """This machine's worker pool: each worker compiles a plan's spec file itself (a Job
    names the file and the check ids), plans balanced between workers by cost."""

    def __init__(self, workers: int, options: CompileOptions) -> None:
        self.workers, self.options = workers, options
        self.pool = Pool(workers, _work)
        self.notes: list[str] = []

    def __enter__(self) -> Local:
        self.pool.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.__exit__(*exc)

    def run(self, units: list[Unit]) -> Iterator[tuple[Hashable, Outcome]]:
        digests: dict[str, str] = {}
        handed = []
        for unit in units:
            plan: CasePlan = unit.payload
            path = str(plan.spec.path)
            if path not in digests:
                digests[path] = _digest(path)
            job = Job(path, self.options, _expect(plan), digests[path])
            handed.append(replace(unit, payload=(job, plan)))
        return self.pool.run(Queue.balanced(handed, self.workers, warmup))

    def in_flight(self) -> Iterator[tuple[Hashable, Outcome]]:
        return self.pool.in_flight()


def run_jobs(
    specs: Sequence[tuple[Spec, tuple[CasePlan, ...]]],
    executor: Executor,
    report: Callable[[Spec, Outcome], bool],
    progress: Callable[[int, str], None] | None = None,
) -> None:
    """Hand each spec with its assembled outcome to `report`, in order, as soon as it and
    every spec before it are done (`report` returns False to stop the run: --fail-fast);
    `progress` hears of each plan's checks as the plan finishes. A plan that stops (spec
    error, internal error) ends its spec there, as in one process. Ctrl-C or SIGTERM
    (KeyboardInterrupt) stops the workers at once; every check finished so far (and those
    of the cases in progress) is reported, per spec in order, then the interrupt goes on.
    `report` runs with signals deferred, so it never stops halfway."""
    done: dict[tuple[int, int], Outcome] = {}
    cursor = reported = 0
    with executor:
        try:
            for key, outcome in executor.run(units(specs)):
                assert isinstance(key, tuple)
                done[key] = outcome
                if progress is not None:
                    spec, plans = specs[key[0]]
                    progress(len(plans[key[1]].targets), spec.name)
                ready, cursor = _assemble(specs, done, cursor)
                for spec, assembled in ready:
                    with deferred_signals():
                        go_on = report(spec, assembled)
                        reported += 1
                    if not go_on:
                        return
        except KeyboardInterrupt:
            with deferred_signals():  # a second signal waits until these are reported
                for key, outcome in executor.in_flight():
                    assert isinstance(key, tuple)
                    done[key] = outcome
                for spec, assembled in _finished(specs, done, reported):
                    report(spec, assembled)
            raise


def _finished(
    specs: Sequence[tuple[Spec, tuple[CasePlan, ...]]], done: dict[tuple[int, int], Outcome], cursor: int
) -> Iterator[tuple[Spec, Outcome]]:
    """After an interrupt: every spec from `cursor` on with the results of its plans that
    finished (or got partway), in plan order (the interrupt itself is raised after them)."""
    for s in range(cursor, len(specs)):
        spec, plans = specs[s]
        found = [done[(s, i)] for i in range(len(plans)) if (s, i) in done]
        if found:
            errors = tuple(e for o in found for e in o.error or ())
            yield spec, Outcome([r for o in found for r in o.results], error=errors or None)


def _assemble(
    specs: Sequence[tuple[Spec, tuple[CasePlan, ...]]], done: dict[tuple[int, int], Outcome], cursor: int
) -> tuple[list[tuple[Spec, Outcome]], int]:
    """The specs from `cursor` on whose plans are done (a plan that stopped ends its spec)."""
    ready: list[tuple[Spec, Outcome]] = []
    while cursor < len(specs):
        spec, plans = specs[cursor]
        results: list[CheckResult] = []
        errors: list[SpecIssue] = []
        last: Outcome | None = None
        for i in range(len(plans)):
            last = done.get((cursor, i))
            if last is None:
                return ready, cursor
            results += last.results
            errors += [e for e in last.error or () if e not in errors]
            if last.stopped:
                break
        assert last is not None
        ready.append((spec, replace(last, results=results, error=tuple(errors) or None)))
        cursor += 1
    return ready, cursor


# -- in the worker --------------------------------------------------------------------------

_COMPILED: dict[tuple[str, CompileOptions], tuple[CasePlan, ...]] = {}
_DIGESTS: dict[tuple[str, CompileOptions], str] = {}
_BOUND: dict[tuple[str, CompileOptions], Engines] = {}
_ONE_THREAD: list[object] = []


def _work(job: Job, observer: Recorder) -> Outcome:
    from specgrad.runner import Engines
    from specgrad.validate import parse_spec

    settle_worker()
    try:
        key = (job.path, job.options)
        if key not in _COMPILED:
            digest = _digest(job.path)
            _COMPILED[key] = job.options.plans(parse_spec(Path(job.path), job.options.config))
            _DIGESTS[key] = digest
    except SpecError as exc:
        return Outcome([], error=tuple(exc.issues))
    except Exception as exc:  # noqa: BLE001 - a bug must not stop the other checks
        return Outcome([], internal="".join(traceback.format_exception_only(type(exc), exc)).strip())
    same = _DIGESTS[key] == job.digest or not job.digest
    # the plan with the parent's check ids (a shard runs some of a spec's plans)
    found = [p for p in _COMPILED[key] if _expect(p) == job.expect] if same else []
    if not found:
        changed = "the spec file changed while the run was going on; run again"
        return Outcome([], error=(SpecIssue(Location(Path(job.path)), "", changed),))
    if key not in _BOUND:
        _BOUND[key] = Engines()
    return run_case(found[0], _BOUND[key], observer)


def settle_worker() -> None:
    """What a worker process keeps for its life: the allocator's tuning, one BLAS thread
    (its environment says so too)."""
    tune_allocator()
    if not _ONE_THREAD:
        limits = one_blas_thread()
        limits.__enter__()
        _ONE_THREAD.append(limits)


def run_case(plan: CasePlan, engines: Engines, observer: Recorder) -> Outcome:
    """One plan's outcome in a worker, whatever its code raises."""
    from specgrad.runner import run_plan

    try:
        return Outcome(run_plan(plan, engines, observer))
    except SpecError as exc:
        return Outcome([], error=tuple(exc.issues), contained=bool(plan.spec.implementation))
    except Exception as exc:  # noqa: BLE001 - a bug must not stop the other checks
        return Outcome([], internal="".join(traceback.format_exception_only(type(exc), exc)).strip())
    except BaseException as exc:  # noqa: BLE001 - the layer's (workers ignore Ctrl-C): its check's ERROR
        cause = f"saw the layer's code raise {type(exc).__name__}"
        if isinstance(exc, KeyboardInterrupt):
            cause += " (not a Ctrl-C: workers ignore those)"
        after = "; the worker went on with the next case"
        return Outcome(lost_results(plan, observer.results, observer.current, Status.ERROR, cause, after))


def _digest(path: str) -> str:
    """The spec file's content, hashed ("" where it cannot be read: parsing says why)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return ""


def _expect(plan: CasePlan) -> tuple[str, ...]:
    """A plan's check ids: a worker compiling the spec again must find the same plan."""
    return tuple(plan.check_id(t) for t in plan.targets)
