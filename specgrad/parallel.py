"""Case plans across worker processes (-j N), results identical to a run in one process.

A job is (spec file, plan number, how plans were compiled): picklable, and each worker
parses and compiles the spec itself (once per process), so no model object crosses a
process boundary. Jobs are submitted largest first (estimated from the elements the plan
perturbs) so a big convolution does not start last; results are handed back per spec in
the order of the specs and of their plans, whatever order the jobs finish in.

Workers are started with `spawn` after the BLAS thread variables are set to one thread
(every check runs on one BLAS thread, in process too: see `process`), so N workers use N
cores and a BLAS's thread-dependent sums never make figures depend on N. A worker that
dies (a segfault in user code) breaks the pool; the jobs it took down are rerun one at a
time in a single worker, so only the one that kills its process is reported, as an ERROR
of its checks.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from specgrad.compile import CasePlan
from specgrad.config import Config
from specgrad.errors import SpecError, SpecIssue
from specgrad.model import Spec
from specgrad.process import one_blas_thread, tune_allocator
from specgrad.results import CheckResult, Status

if TYPE_CHECKING:
    from specgrad.runner import Engines

#: the thread-count variables of the BLAS and OpenMP runtimes numpy and cupy link against
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


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
    config: Config | None = None  # the project's [tool.specgrad]: its tolerances shape the specs

    def plans(self, spec: Spec) -> tuple[CasePlan, ...]:
        from specgrad.compile import compile_spec
        from specgrad.select import compile_expression

        select = compile_expression(self.keyword) if self.keyword else None
        dtypes = list(self.dtypes) if self.dtypes is not None else None
        return compile_spec(
            spec,
            dtypes=dtypes,
            seed=self.seed,
            select=select,
            mode=self.mode,
            max_elements=self.max_elements,
            max_memory=self.max_memory,
            devices=self.devices,
        )


@dataclass(frozen=True)
class Job:
    path: str
    index: int
    options: CompileOptions


@dataclass(frozen=True)
class Outcome:
    """What one job (or, assembled, one spec) came to: its results, and what stopped it,
    if anything: a spec error binding its callables, an internal error, an interrupt."""

    results: list[CheckResult]
    error: tuple[SpecIssue, ...] | None = None
    internal: str | None = None
    interrupted: bool = False
    contained: bool = False  # the error stops one implementation of several, not the spec

    @property
    def stopped(self) -> bool:
        return bool((self.error and not self.contained) or self.internal or self.interrupted)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cost(plan: CasePlan) -> int:
    """The elements a plan perturbs (its gradient checks), plus one for its contracts."""
    size = 1
    for name in plan.gradient_targets:
        n = 1
        for d in plan.spec.tensor(name).shape:
            n *= d
        size += n
    return size


def run_jobs(
    specs: Sequence[tuple[Spec, tuple[CasePlan, ...]]], options: CompileOptions, workers: int
) -> Iterator[tuple[Spec, Outcome]]:
    """Each spec with its assembled outcome, in order, as soon as it and every spec before
    it are done. A plan that stops (spec error, internal error, interrupt) ends its spec
    there, as in one process; an interrupt also ends the run once the plans before it are
    done (what a run in one process would have finished)."""
    jobs = {(s, i): plan for s, (_, plans) in enumerate(specs) for i, plan in enumerate(plans)}
    done: dict[tuple[int, int], Outcome] = {}
    lost: list[tuple[int, int]] = []
    stop: tuple[int, int] | None = None
    cursor = 0
    with _pool(workers) as pool:
        futures = {
            pool.submit(_work, Job(str(specs[key[0]][0].path), key[1], options)): key
            for key in sorted(jobs, key=lambda k: -cost(jobs[k]))
        }
        for future in as_completed(futures):
            key = futures[future]
            if future.cancelled():
                continue
            try:
                done[key] = future.result()
            except BrokenProcessPool:
                lost.append(key)
                continue
            except Exception as exc:  # noqa: BLE001 - a result that cannot come back is that plan's error
                done[key] = Outcome([], internal=f"a worker's result could not come back: {exc!r}")
            if done[key].interrupted and (stop is None or key < stop):
                stop = key
                for other, k in futures.items():
                    if k > stop:
                        other.cancel()
            ready, cursor = _assemble(specs, done, cursor, stop)
            yield from ready
            if stop is not None and cursor > stop[0]:
                return
    _isolated(sorted(k for k in lost if stop is None or k < stop), jobs, specs, options, done)
    ready, cursor = _assemble(specs, done, cursor, stop)
    yield from ready


def _isolated(
    lost: list[tuple[int, int]],
    jobs: dict[tuple[int, int], CasePlan],
    specs: Sequence[tuple[Spec, tuple[CasePlan, ...]]],
    options: CompileOptions,
    done: dict[tuple[int, int], Outcome],
) -> None:
    """Rerun the jobs a dead worker took down one at a time in a single worker (replaced
    after a job kills it): only the job that kills its process is reported as dead."""
    while lost:
        with _pool(1) as alone:
            while lost:
                key = lost.pop(0)
                try:
                    done[key] = alone.submit(_work, Job(str(specs[key[0]][0].path), key[1], options)).result()
                except BrokenProcessPool:
                    done[key] = Outcome(_died(jobs[key]))
                    break


def _assemble(
    specs: Sequence[tuple[Spec, tuple[CasePlan, ...]]],
    done: dict[tuple[int, int], Outcome],
    cursor: int,
    stop: tuple[int, int] | None,
) -> tuple[list[tuple[Spec, Outcome]], int]:
    """The specs from `cursor` on whose plans are done (up to the first that stopped)."""
    ready: list[tuple[Spec, Outcome]] = []
    while cursor < len(specs) and (stop is None or cursor <= stop[0]):
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


def _died(plan: CasePlan) -> list[CheckResult]:
    message = "the worker process running this case died (a crash in native code?); the run went on"
    return [plan.result(t, Status.ERROR, message) for t in plan.targets]


@contextmanager
def _pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A spawn pool whose workers run BLAS on one thread (the variables stay set while it
    lives: workers start on demand; this process's BLAS has long read them)."""
    saved = {v: os.environ.get(v) for v in THREAD_VARIABLES}
    for v in THREAD_VARIABLES:
        os.environ[v] = "1"
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            try:
                yield pool
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        for v, value in saved.items():
            if value is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = value


# -- in the worker --------------------------------------------------------------------------

_COMPILED: dict[tuple[str, CompileOptions], tuple[CasePlan, ...]] = {}
_BOUND: dict[tuple[str, CompileOptions], Engines] = {}
_ONE_THREAD: list[object] = []


def _work(job: Job) -> Outcome:
    from specgrad.runner import Engines, run_plan
    from specgrad.validate import parse_spec

    tune_allocator()
    if not _ONE_THREAD:  # for the worker's life (its environment says so too)
        limits = one_blas_thread()
        limits.__enter__()
        _ONE_THREAD.append(limits)
    plan: CasePlan | None = None
    try:
        key = (job.path, job.options)
        if key not in _COMPILED:
            _COMPILED[key] = job.options.plans(parse_spec(Path(job.path), job.options.config))
        plan = _COMPILED[key][job.index]
        if key not in _BOUND:
            _BOUND[key] = Engines()
        return Outcome(run_plan(plan, _BOUND[key]))
    except SpecError as exc:
        return Outcome(
            [], error=tuple(exc.issues), contained=plan is not None and bool(plan.spec.implementation)
        )
    except KeyboardInterrupt:
        return Outcome([], interrupted=True)
    except Exception as exc:  # noqa: BLE001 - a bug must not stop the other checks
        return Outcome([], internal="".join(traceback.format_exception_only(type(exc), exc)).strip())
