"""--executor dask: case plans submitted to a Dask distributed cluster (--scheduler ADDRESS),
or to a LocalCluster of this machine's cores when no address is given.

Each plan goes to the cluster whole (pickled with cloudpickle: no spec file is read on
the workers), largest first (Dask's priority), and comes back as it finishes (as_completed).
On a worker it runs in a worker process of its own (workers.Pool, kept for the Dask
worker's life), so a crash in the layer's code or a timeout is that check's ERROR or
TIMEOUT, as with -j, and the Dask worker lives on. That needs a worker that may start
processes: the LocalCluster's are; a `dask worker` is daemonic unless started with
DASK_DISTRIBUTED__WORKER__DAEMON=False, and then plans run in the Dask worker's own
thread (no timeouts; a crash takes the Dask worker down).

A Dask worker that dies (killed, out of memory, its machine lost) loses the plan it ran:
that plan is submitted once more, on another worker, and if that one dies too its checks
are ERROR naming both. Our LocalCluster fails a plan at the first death
(allowed-failures 0), so "retried once" is exact; a scheduler of your own retries as its
distributed.scheduler.allowed-failures says (3 by default) before we retry once more.

What the workers need: specgrad and the layers' frameworks installed (the same
environment), and the layers' code importable: installed as a package, on a shared file
system at the path it has here (each worker process goes to this process's working
folder where it exists, so a spec's relative paths mean the same), or sent with
`client.upload_file` (a module on the worker's sys.path, which its processes inherit).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import sys
import threading
import uuid
from collections.abc import Hashable, Iterator
from typing import Any

from specgrad.compile import CasePlan
from specgrad.errors import UsageError
from specgrad.parallel import run_case, settle_worker
from specgrad.results import Status
from specgrad.schedule import Queue, Unit
from specgrad.workers import Outcome, Pool, Recorder

#: seconds to reach a scheduler before the address is reported unreachable
CONNECT_SECONDS = 10


class Dask:
    """parallel.Executor over a Dask cluster; `notes` collects what the run should say
    (workers that died, plans retried)."""

    def __init__(self, scheduler: str | None, workers: int, import_roots: tuple[str, ...] = ()) -> None:
        self.scheduler, self.workers = scheduler, workers
        self.import_roots = import_roots
        self.notes: list[str] = []
        self.client: Any = None
        self.cluster: Any = None
        self._settings: Any = None
        self._pending: dict[str, tuple[Unit, str | None]] = {}
        self._futures: list[Any] = []

    def __enter__(self) -> Dask:
        try:
            import dask
            from distributed import Client, LocalCluster
        except ImportError:
            raise UsageError(
                "--executor dask needs Dask's distributed scheduler: pip install 'specgrad[dask]'"
            ) from None
        if self.scheduler:
            try:
                self.client = Client(self.scheduler, timeout=CONNECT_SECONDS)
            except (OSError, ValueError, TypeError) as exc:
                where = f"--scheduler {self.scheduler}"
                raise UsageError(f"{where}: cannot reach a Dask scheduler there: {exc}") from None
            return self
        # for the cluster's whole life: a worker restarted after a death reads them again
        self._settings = dask.config.set(
            {
                "distributed.scheduler.allowed-failures": 0,  # we retry, once, elsewhere
                "distributed.scheduler.worker-saturation": 1.0,  # a worker holds what it runs
                "distributed.worker.daemon": False,  # so its plans run in processes of their own
            }
        )
        self._settings.__enter__()
        self.cluster = LocalCluster(
            n_workers=self.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,  # no web server (and no port clash between runs)
            silence_logs=logging.CRITICAL,  # a worker's death is reported here, per check
        )
        self.client = Client(self.cluster)
        return self

    def __exit__(self, *exc: object) -> None:
        for closing in (self.client, self.cluster):
            if closing is not None:
                try:
                    closing.close()
                except Exception:  # noqa: BLE001 - closing what may be half gone already
                    pass
        if self._settings is not None:
            self._settings.__exit__(None, None, None)

    def run(self, units: list[Unit]) -> Iterator[tuple[Hashable, Outcome]]:
        from distributed import as_completed

        token = uuid.uuid4().hex[:8]
        share = self.workers if self.cluster is not None else 1
        ordered = sorted(units, key=lambda u: (-u.seconds, u.name))
        # one submission: Dask queues the tasks on the scheduler (a worker holds only what it
        # runs, so a worker's death costs only that) and starts them in this order
        futures = self.client.map(
            run_on_worker,
            [_blob(u) for u in ordered],
            [os.getcwd()] * len(ordered),
            [self.import_roots] * len(ordered),
            [share] * len(ordered),
            key=[f"specgrad-{token}-{rank}" for rank in range(len(ordered))],
            pure=False,
        )
        self._futures += futures
        for unit, future in zip(ordered, futures, strict=True):
            self._pending[future.key] = (unit, None)
        done = as_completed(futures)
        for future in done:
            unit, died_on = self._pending.pop(future.key)
            if future.status == "finished":
                outcome = future.result()
                if died_on:
                    self.notes.append(
                        f"a Dask worker ({died_on}) died while running {unit.name} and its case; "
                        "it was run again on another worker"
                    )
            else:
                outcome, retry = self._failed(future, unit, died_on, share)
                if retry is not None:
                    self._pending[retry.key] = (unit, _address(future.exception()))
                    done.add(retry)
                    continue
            future.release()
            yield unit.key, outcome

    def in_flight(self) -> Iterator[tuple[Hashable, Outcome]]:
        """Plans still on the cluster are cancelled; what they finished is lost with them."""
        if self.client is not None:
            try:
                self.client.cancel(list(self._futures))
            except Exception:  # noqa: BLE001 - the cluster may be going away
                pass
        return iter(())

    def _again(self, unit: Unit, key: str, share: int, avoid: str) -> Any:
        """The plan submitted once more, first in line, elsewhere where there is an elsewhere."""
        where: dict[str, Any] = {}
        others = [w for w in self.client.scheduler_info()["workers"] if w != avoid]
        if others:
            where = {"workers": others, "allow_other_workers": True}
        args = (_blob(unit), os.getcwd(), self.import_roots, share)
        future = self.client.submit(run_on_worker, *args, key=key, pure=False, priority=1, **where)
        self._futures.append(future)
        return future

    def _failed(self, future: Any, unit: Unit, died_on: str | None, share: int) -> tuple[Outcome, Any]:
        """The outcome of a plan whose task failed, or (None, the retry) the first time its
        worker died."""
        from distributed import KilledWorker

        exc = future.exception() if future.status == "error" else None
        plan: CasePlan = unit.payload
        if isinstance(exc, KilledWorker):
            address = _address(exc)
            if died_on is None:
                return Outcome([]), self._again(unit, f"{future.key}-again", share, address)
            why = (
                f"its Dask worker died while running it ({died_on}), and so did the one it was run again on "
                f"({address}): the layer's code takes a Dask worker down (a crash, or memory); run it with "
                "-j or --isolate to see the signal"
            )
        elif exc is not None:
            why = (
                f"the Dask cluster could not run it: {type(exc).__name__}: {exc} (are specgrad and the "
                "layer's code installed on the workers? see the README, 'Running on a Dask cluster')"
            )
        else:
            why = f"the Dask cluster dropped it (task {future.status})"
        return Outcome([plan.result(t, Status.ERROR, why) for t in plan.targets]), None


def _blob(unit: Unit) -> bytes:
    """The plan, pickled whole (cloudpickle: the spec's read-only mappings too)."""
    import cloudpickle

    return bytes(cloudpickle.dumps(unit.payload))


def _address(exc: Any) -> str:
    worker = getattr(exc, "last_worker", None)
    return str(getattr(worker, "address", worker) or "a worker")


# -- on a Dask worker -----------------------------------------------------------------------

_LOCAL = threading.local()


def run_on_worker(blob: bytes, cwd: str, import_roots: tuple[str, ...], share: int) -> Outcome:
    """A Dask task: one plan, in this thread's worker process where the Dask worker may
    start processes, else here (the Dask worker's own thread)."""
    plan: CasePlan = pickle.loads(blob)
    if multiprocessing.current_process().daemon:  # here: the working folder is the Dask worker's
        return _work_shipped((blob, "", import_roots), Recorder(None))
    job = (blob, cwd, import_roots)
    pool = getattr(_LOCAL, "pool", None)
    if pool is None:  # one per Dask worker thread, for its life (killed with the process)
        pool = _LOCAL.pool = Pool(1, _work_shipped, share=share)
        pool.__enter__()
    unit = Unit(key=0, name=plan.check_id(plan.targets[0]), seconds=0.0, payload=(job, plan))
    for _, outcome in pool.run(Queue.in_order([unit])):
        return outcome
    raise RuntimeError("the worker pool returned nothing")  # pragma: no cover - run yields once per unit


_ENGINES: dict[tuple[str, str], Any] = {}


def _work_shipped(job: tuple[bytes, str, tuple[str, ...]], observer: Recorder) -> Outcome:
    """workers.Pool's work on a Dask worker: the plan as the client compiled it (`cwd`:
    the client's working folder, gone to in a process of our own; "" stays)."""
    from specgrad.runner import Engines

    blob, cwd, import_roots = job
    settle_worker()
    if cwd and os.path.isdir(cwd) and os.getcwd() != cwd:
        try:
            os.chdir(cwd)  # the spec's relative paths mean what they mean on the client
        except OSError:
            pass
    for root in reversed(import_roots):
        if root not in sys.path:
            sys.path.insert(0, root)
    plan: CasePlan = pickle.loads(blob)
    key = (str(plan.spec.path), plan.spec.name)
    if key not in _ENGINES:
        _ENGINES[key] = Engines()
    return run_case(plan, _ENGINES[key], observer)
