"""Case plans across worker processes (-j N, --isolate, timeouts), results identical to a
run in one process.

A job is (spec file, plan number, how plans were compiled): picklable, and each worker
parses and compiles the spec itself (once per process), so no model object crosses a
process boundary. Jobs are handed out largest first (estimated from the elements the plan
perturbs) so a big convolution does not start last; results are handed back per spec in
the order of the specs and of their plans, whatever order the jobs finish in.

Workers (`workers.Pool`) are spawned with the BLAS thread variables set to one thread
(every check runs on one BLAS thread, in process too: see `process`), so N workers use N
cores and a BLAS's thread-dependent sums never make figures depend on N. A worker that
dies or outlives a check's time limit takes only that job's unfinished checks with it.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from specgrad.compile import CasePlan
from specgrad.config import Config
from specgrad.errors import SpecError, SpecIssue
from specgrad.model import Spec
from specgrad.process import one_blas_thread, tune_allocator
from specgrad.results import CheckResult
from specgrad.workers import Outcome, Pool

if TYPE_CHECKING:
    from specgrad.runner import Engines, Observer


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
            timeout=self.timeout,
        )


@dataclass(frozen=True)
class Job:
    path: str
    index: int
    options: CompileOptions


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
    it are done. A plan that stops (spec error, internal error, interrupt in user code) ends
    its spec there, as in one process; an interrupt also ends the run once the plans before
    it are done. Ctrl-C or SIGTERM here (KeyboardInterrupt) stops the workers at once: every
    check finished so far is yielded, per spec in order, then the interrupt goes on."""
    jobs = {(s, i): plan for s, (_, plans) in enumerate(specs) for i, plan in enumerate(plans)}
    done: dict[tuple[int, int], Outcome] = {}
    stop: tuple[int, int] | None = None
    cursor = 0
    order = sorted(jobs, key=lambda k: -cost(jobs[k]))
    with Pool(workers, _work) as pool:
        try:
            for key, outcome in pool.run(
                [(k, Job(str(specs[k[0]][0].path), k[1], options), jobs[k]) for k in order]
            ):
                assert isinstance(key, tuple)
                done[key] = outcome
                if outcome.interrupted and (stop is None or key < stop):
                    stop = key
                ready, cursor = _assemble(specs, done, cursor, stop)
                yield from ready
                if stop is not None and cursor > stop[0]:
                    return
        except KeyboardInterrupt:
            for key, streamed in pool.in_flight():
                assert isinstance(key, tuple)
                done[key] = Outcome(streamed)
            yield from _finished(specs, done, cursor)
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


# -- in the worker --------------------------------------------------------------------------

_COMPILED: dict[tuple[str, CompileOptions], tuple[CasePlan, ...]] = {}
_BOUND: dict[tuple[str, CompileOptions], Engines] = {}
_ONE_THREAD: list[object] = []


def _work(job: Job, observer: Observer) -> Outcome:
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
        return Outcome(run_plan(plan, _BOUND[key], observer))
    except SpecError as exc:
        return Outcome(
            [], error=tuple(exc.issues), contained=plan is not None and bool(plan.spec.implementation)
        )
    except KeyboardInterrupt:
        return Outcome([], interrupted=True)
    except Exception as exc:  # noqa: BLE001 - a bug must not stop the other checks
        return Outcome([], internal="".join(traceback.format_exception_only(type(exc), exc)).strip())
