"""--executor dask: case plans submitted to a Dask distributed cluster (--scheduler ADDRESS),
or to a LocalCluster of this machine's cores when no address is given.

Plans go to the cluster whole (pickled with cloudpickle: no spec file is read on the
workers), in batches of one spec's plans (schedule.batches: a spec's warm-up, jax
compiling its calls, is paid once per batch, not once per plan; the batches still small
enough to balance), largest first, and come back as each batch finishes (as_completed).
On a worker it runs in a worker process of its own (workers.Pool, kept for the Dask
worker's life), so a crash in the layer's code or a timeout is that check's ERROR or
TIMEOUT, as with -j, and the Dask worker lives on. That needs a worker that may start
processes: the LocalCluster's are; a `dask worker` is daemonic unless started with
DASK_DISTRIBUTED__WORKER__DAEMON=False, and then plans run in the Dask worker's own
thread (no timeouts; a crash takes the Dask worker down).

A Dask worker that dies (killed, out of memory, its machine lost) loses the plan it ran:
that plan is submitted once more (to another worker process: the dead one is gone), and
if that one dies too its checks are ERROR naming both. A plan that was only waiting its
turn on a dying worker, or whose result went with it, is not blamed (each plan sets a
Dask Event on the scheduler as it starts, which the client reads) and is simply submitted
again, up to MAX_LOSSES times. Our LocalCluster fails a plan at the
first death (allowed-failures 0), so "retried once" is exact; a scheduler of your own
retries as its distributed.scheduler.allowed-failures says (3 by default) first.

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
import signal
import sys
import threading
import uuid
from collections.abc import Hashable, Iterator
from typing import Any

from specgrad.compile import CasePlan
from specgrad.cost import warmup
from specgrad.errors import UsageError
from specgrad.parallel import run_case, settle_worker
from specgrad.results import Status
from specgrad.schedule import Queue, Unit, batches
from specgrad.workers import Outcome, Pool, Recorder

#: seconds to reach a scheduler before the address is reported unreachable
CONNECT_SECONDS = 10
#: times a plan may be lost with a worker that died while it waited its turn
MAX_LOSSES = 5


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
        self._pending: dict[str, _Tries] = {}
        self._topic = ""
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
            if not self.client.scheduler_info().get("workers"):  # Dask waits for one: say so
                print(
                    f"specgrad: the Dask scheduler at {self.scheduler} has no workers yet; waiting",
                    file=sys.stderr,
                )
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
        try:
            self.cluster = LocalCluster(
                n_workers=self.workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,  # no web server (and no port clash between runs)
                silence_logs=logging.CRITICAL,  # a worker's death is reported here, per check
                preload=[__name__],  # dask_setup below: its workers leave Ctrl-C to this process
            )
            self.client = Client(self.cluster)
        except Exception as exc:  # noqa: BLE001 - whatever Dask raises: a located error, not a traceback
            self.__exit__()
            raise UsageError(f"--executor dask: could not start a local Dask cluster: {exc}") from None
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
        """The units' outcomes as their batches finish (a dead worker's batch retried)."""
        from distributed import as_completed

        token = uuid.uuid4().hex[:8]
        self._topic = f"specgrad-started-{token}"
        share = self.workers if self.cluster is not None else 0  # 0: each worker's thread count
        workers = share if self.cluster is not None else max(1, len(self.client.scheduler_info()["workers"]))
        grouped = batches(units, workers, warmup)
        # one submission: Dask queues the tasks on the scheduler (a worker holds only what it
        # runs, so a worker's death costs only that) and starts them in this order
        futures = self.client.map(
            run_on_worker,
            [[_blob(u) for u in batch] for batch in grouped],
            [os.getcwd()] * len(grouped),
            [self.import_roots] * len(grouped),
            [share] * len(grouped),
            [self._topic] * len(grouped),
            key=[f"specgrad-{token}-{rank}" for rank in range(len(grouped))],
            pure=False,
        )
        self._futures += futures
        for batch, future in zip(grouped, futures, strict=True):
            self._pending[future.key] = _Tries(batch)
        done = as_completed(futures)
        for future in done:
            tries = self._pending.pop(future.key)
            outcomes = None
            if future.status == "finished":
                try:
                    outcomes = future.result()
                except Exception:  # noqa: BLE001 - its result went with a worker that died since
                    outcomes = None
            if outcomes is None:
                outcomes, retries = self._failed(future, tries, share)
                for again, its in retries:
                    self._pending[again.key] = its
                    done.add(again)
                if retries:
                    continue
            future.release()
            yield from ((unit.key, outcome) for unit, outcome in zip(tries.batch, outcomes, strict=True))

    def _started(self, key: str, address: str) -> bool:
        """Whether the task `key` had started on the worker at `address` (its event came)."""
        from distributed import Event

        try:
            event = Event(f"{self._topic}:{key}@{address}", client=self.client)
            started = bool(event.is_set())
            event.clear()  # the scheduler forgets it
            return started
        except Exception:  # noqa: BLE001 - cannot tell: count the death against it
            return True

    def in_flight(self) -> Iterator[tuple[Hashable, Outcome]]:
        """Plans still on the cluster are cancelled; what they finished is lost with them."""
        if self.client is not None:
            try:
                self.client.cancel(list(self._futures))
            except Exception:  # noqa: BLE001 - the cluster may be going away
                pass
        return iter(())

    def _again(self, batch: list[Unit], key: str, share: int) -> Any:
        """The plan submitted once more, first in line. It goes wherever Dask sends it: the
        worker that died is gone (a nanny restarts a fresh process at another address), and
        restricting it to the others would strand it when they die too (no-worker state)."""
        args = ([_blob(u) for u in batch], os.getcwd(), self.import_roots, share, self._topic)
        future = self.client.submit(run_on_worker, *args, key=key, pure=False, priority=1)
        self._futures.append(future)
        return future

    def _failed(
        self, future: Any, tries: _Tries, share: int
    ) -> tuple[list[Outcome], list[tuple[Any, _Tries]]]:
        """The outcomes of a batch whose task failed, or ([], the tasks submitted again)
        where its worker died and it has a try left: a batch that took a worker down goes
        again plan by plan, so only the plan that does it is blamed a second time."""
        from distributed import KilledWorker

        exc = future.exception() if future.status == "error" else None
        if isinstance(exc, KilledWorker):
            address = _address(exc)
            tries.lost += 1
            ran = self._started(future.key, address)
            if ran:
                tries.died.append(address)
                if len(tries.died) == 1:
                    self.notes.append(
                        f"a Dask worker ({address}) died while running {tries.name}: run again, plan by plan"
                    )
            if len(tries.died) < 2 and tries.lost < MAX_LOSSES:
                base = _again_key(future.key, tries.lost)
                parts = [[u] for u in tries.batch] if ran else [tries.batch]
                return [], [
                    (self._again(part, f"{base}-{i}", share), tries.split(part))
                    for i, part in enumerate(parts)
                ]
            if len(tries.died) < 2:
                why = (
                    f"lost {tries.lost} times with Dask workers that died while it waited its turn "
                    "(the cluster is losing workers: out of memory? preempted?)"
                )
            else:
                why = (
                    f"its Dask worker died while running it ({tries.died[0]}), and so did the one it was run "
                    f"again on ({tries.died[1]}): the layer's code takes a Dask worker down (a crash, or "
                    "memory); run it with -j or --isolate to see the signal"
                )
        elif exc is not None:
            why = (
                f"the Dask cluster could not run it: {type(exc).__name__}: {exc} (are specgrad and the "
                "layer's code installed on the workers? see the README, 'Running on a Dask cluster')"
            )
        else:  # lost: done, but its result went with a worker that died before it came back
            tries.lost += 1
            if tries.lost < MAX_LOSSES and future.status != "cancelled":
                again = _again_key(future.key, tries.lost)
                return [], [(self._again(tries.batch, again, share), tries)]
            why = f"lost {tries.lost} times with Dask workers that died (the cluster is losing workers)"
            if future.status == "cancelled":
                why = "cancelled on the Dask cluster (restarted, or closed, by someone else?)"
        plans: list[CasePlan] = [u.payload for u in tries.batch]
        return [Outcome([p.result(t, Status.ERROR, why) for t in p.targets]) for p in plans], []


class _Tries:
    """A batch's tasks so far: how often its worker died under it, and where it ran then."""

    def __init__(self, batch: list[Unit], lost: int = 0, died: tuple[str, ...] = ()) -> None:
        self.batch = batch
        self.lost = lost
        self.died: list[str] = list(died)

    def split(self, part: list[Unit]) -> _Tries:
        """The tries of `part` of this batch: its deaths so far are each part's."""
        return _Tries(part, self.lost, tuple(self.died))

    @property
    def name(self) -> str:
        more = f" and {len(self.batch) - 1} other case(s) of its spec" if len(self.batch) > 1 else ""
        return f"{self.batch[0].name}{more}"


def _again_key(key: str, tries: int) -> str:
    """The key of a task's `tries`-th resubmission (Dask keys are never reused)."""
    return f"{key.split('-again')[0]}-again{tries}"


def _blob(unit: Unit) -> bytes:
    """The plan, pickled whole (cloudpickle: the spec's read-only mappings too)."""
    import cloudpickle

    return bytes(cloudpickle.dumps(unit.payload))


def _address(exc: Any) -> str:
    worker = getattr(exc, "last_worker", None)
    return str(getattr(worker, "address", worker) or "a worker")


# -- on a Dask worker -----------------------------------------------------------------------


def dask_setup(worker: Any) -> None:
    """Dask's preload hook, in our LocalCluster's worker processes: a Ctrl-C reaches the
    whole process group, and it is this run's process that stops the cluster (a worker
    that took it would print its traceback over the run's last lines)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


_LOCAL = threading.local()


def run_on_worker(
    blobs: list[bytes], cwd: str, import_roots: tuple[str, ...], share: int, topic: str
) -> list[Outcome]:
    """A Dask task: a batch of plans, one after the other in this thread's worker process
    where the Dask worker may start processes, else here (the Dask worker's own thread).
    It tells the scheduler it started (`topic`): a worker that dies now takes it down, not
    one it waited on."""
    started = None
    try:
        from distributed import Event, get_worker

        worker = get_worker()
        share = share or getattr(getattr(worker, "state", None), "nthreads", 1)  # your cluster: its threads
        # set on the scheduler before the plan starts (log_event could still be in flight
        # when the plan's first call kills the worker)
        started = Event(f"{topic}:{worker.get_current_task()}@{worker.address}")
        started.set()
    except (ImportError, ValueError, AttributeError):  # not on a Dask worker (tests)
        pass
    try:
        return _run_batch(blobs, cwd, import_roots, max(1, share))
    finally:
        if started is not None:
            started.clear()  # done: the scheduler forgets it


def _run_batch(blobs: list[bytes], cwd: str, import_roots: tuple[str, ...], share: int) -> list[Outcome]:
    """The batch's outcomes, in order; `share`: the processes sharing this machine's memory."""
    if multiprocessing.current_process().daemon:  # here: the working folder is the Dask worker's
        return [_work_shipped((blob, "", import_roots), Recorder(None)) for blob in blobs]
    pool = getattr(_LOCAL, "pool", None)
    if pool is None:  # one per Dask worker thread, for its life (killed with the process)
        pool = _LOCAL.pool = Pool(1, _work_shipped, share=share)
        pool.__enter__()
    units = []
    for i, blob in enumerate(blobs):
        plan: CasePlan = pickle.loads(blob)
        units.append(
            Unit(
                key=i,
                name=plan.check_id(plan.targets[0]),
                seconds=0.0,
                payload=((blob, cwd, import_roots), plan),
            )
        )
    got = dict(pool.run(Queue.in_order(units)))
    return [got[i] for i in range(len(units))]


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
