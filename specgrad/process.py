"""Process-wide settings a checking process makes (the CLI and its workers).

Every check runs BLAS on one thread, whatever -j says: a BLAS's results depend on how many
threads split its sums, so this is what makes figures identical for any number of workers
(parallelism comes from the workers, `specgrad.parallel`). threadpoolctl sets it on the
BLAS and OpenMP libraries numpy has loaded, `one_blas_thread` for the time of a run.

glibc hands freed blocks of 128 KiB and more straight back to the kernel (mmap), so every
new array of that size is fresh pages that fault in on first touch. A gradient check
allocates a layer's outputs and intermediates thousands of times in a row; with the
default, a small convolution's forward ran 4 to 5 times slower inside the per-element loop
than alone. Keeping freed memory in the heap (up to the thresholds below) removes that.
Nothing happens on other C libraries, and a library user's process is left alone: only
entry points call `tune_allocator`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from threadpoolctl import threadpool_limits

#: glibc mallopt parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: blocks up to this size come from the heap (glibc's ceiling on 64-bit is 32 MiB)
MMAP_THRESHOLD = 32 << 20
#: free memory kept at the heap's top before it is returned to the kernel
TRIM_THRESHOLD = 256 << 20

_tuned = False


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds, once; False where there is no glibc."""
    global _tuned
    if _tuned or not sys.platform.startswith("linux"):
        return _tuned
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    return _tuned


_single: list[bool] = []


def single_threaded() -> bool:
    """Whether this process checks on one thread (frameworks loaded later follow it:
    torch's and XLA's own thread pools are not BLAS libraries threadpoolctl sees)."""
    return bool(_single)


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS and OpenMP limited to one thread in this process while the block runs."""
    _single.append(True)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        _single.pop()


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, like Ctrl-C's KeyboardInterrupt: a CI runner's
    cancel or `kill` stops the run the same clean way (reports written with what finished)."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises Terminated in the main thread while the block runs (elsewhere, e.g.
    in a thread, signal handlers cannot be set and nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_pending: list[int] = []
_depth: list[bool] = []


def pending_signal() -> int | None:
    """The SIGINT or SIGTERM that arrived inside `deferred_signals`, if one did (code that
    can stop early, such as drawing pictures, looks here)."""
    return _pending[0] if _pending else None


def interrupt_for(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


@contextmanager
def deferred_signals() -> Iterator[None]:
    """SIGINT and SIGTERM are recorded, not raised, while the block runs (bookkeeping that
    must not stop halfway: a spec's results half added, a report half written), then raised
    when it ends (the first one, as KeyboardInterrupt or Terminated). Main thread only."""
    if threading.current_thread() is not threading.main_thread() or _depth:
        _depth.append(True)  # nested: the outermost block raises
        try:
            yield
        finally:
            _depth.pop()
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, _record)
    _depth.append(True)
    try:
        yield
    except BaseException:
        _pending.clear()  # the block's own exception goes on; the signal is not raised twice
        raise
    finally:
        _depth.pop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if _pending:
        signum = _pending[0]
        _pending.clear()
        raise interrupt_for(signum)


def _record(signum: int, frame: object) -> None:
    if not _pending:
        _pending.append(signum)
