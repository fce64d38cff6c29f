"""The runner's observer (what a worker tells the main process) and how a plan's results are
made up when its worker dies or is stopped."""

from __future__ import annotations

from pathlib import Path

from specgrad.compile import compile_spec
from specgrad.results import CheckResult, Status
from specgrad.runner import Engines, run_plan
from specgrad.validate import parse_spec
from specgrad.workers import lost_results
from tests.conftest import dedent

LAYER = """
def forward(x, w):
    return x @ w

def backward(g, x, w):
    return g @ w.T, x.T @ g
"""

SPEC = """\
specgrad: 1
name: s
description: d
forward: m:forward
backward: m:backward
inputs:
  x: {shape: [2, 3]}
parameters:
  w: {shape: [3, 4]}
dtypes: [float64]
cases: [random]
"""


class _Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def step(self, label: str, targets: tuple[str, ...], at_least: float = 0.0) -> None:
        self.events.append(("step", (label, targets)))

    def result(self, result: CheckResult) -> None:
        self.events.append(("result", result.target))


def _plan(tmp_path: Path):  # type: ignore[no-untyped-def]
    (tmp_path / "m.py").write_text(dedent(LAYER))
    (tmp_path / "s.yaml").write_text(SPEC)
    return compile_spec(parse_spec(tmp_path / "s.yaml"))[0]


def test_the_observer_hears_each_step_before_its_checks_and_every_result_once(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    log = _Log()
    results = run_plan(plan, Engines(), log)
    assert [r.target for r in results] == list(plan.targets)  # returned in the plan's order
    told = [e[1] for e in log.events if e[0] == "result"]
    assert sorted(told) == sorted(plan.targets)  # each once
    steps = [e[1] for e in log.events if e[0] == "step"]
    labels = [s[0] for s in steps]  # type: ignore[index]
    assert labels[:2] == ["importing the spec's callables", "the case's forward and backward calls"]
    assert "the precision probes of the gradient checks" in labels
    # the contracts settled by the first calls are told before any gradient check begins
    first_gradient_step = next(
        i for i, e in enumerate(log.events) if e == ("step", ("the gradient check of x", ("x",)))
    )
    contracts_told = [e[1] for e in log.events[:first_gradient_step] if e[0] == "result"]
    assert "contract.forward_output" in contracts_told and "contract.no_mutation" in contracts_told
    assert "contract.taylor" not in contracts_told  # it takes calls of its own, after the gradients


def test_lost_results_keep_what_finished_and_say_what_was_cut_short(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    done = [plan.result("contract.forward_output", Status.PASS), plan.result("x", Status.PASS)]
    out = lost_results(plan, done, ("the gradient check of w", ("w",)), Status.ERROR, "was killed by SIGSEGV")
    assert [r.target for r in out] == list(plan.targets)
    by = {r.target: r for r in out}
    assert by["x"].status is by["contract.forward_output"].status is Status.PASS
    assert by["w"].status is Status.ERROR
    assert by["w"].message == (
        "the worker was killed by SIGSEGV during the gradient check of w; the run went on in a fresh worker"
    )
    assert by["contract.taylor"].message.startswith("not run: the worker was killed by SIGSEGV")
    timed = lost_results(
        plan,
        [],
        ("the Taylor test", ("contract.taylor",)),
        Status.TIMEOUT,
        "took longer than 3 s (--timeout)",
    )
    t = {r.target: r for r in timed}
    assert t["contract.taylor"].status is Status.TIMEOUT
    assert t["contract.taylor"].message.startswith(
        "the Taylor test took longer than 3 s (--timeout): the worker was stopped"
    )
    assert t["x"].status is Status.ERROR and t["x"].message.startswith("not run: the Taylor test took longer")
    before = lost_results(plan, [], None, Status.ERROR, "exited with status 1")
    assert {r.status for r in before} == {Status.ERROR}
    assert before[0].message.startswith("the worker exited with status 1 during the case's setup")


def test_a_step_gets_its_floor_of_seconds_whatever_the_timeout(tmp_path: Path) -> None:
    """Importing the callables (a framework's import takes seconds) is never cut at 1 s."""
    from dataclasses import replace

    from specgrad.runner import IMPORT_SECONDS
    from specgrad.workers import _Worker

    plan = replace(_plan(tmp_path), timeout=1.0)
    w = _Worker(process=None, conn=None, key=0, plan=plan, step=("x", ("x",)), since=100.0)  # type: ignore[arg-type]
    assert w.deadline() == 101.0
    w.at_least = IMPORT_SECONDS
    assert w.deadline() == 100.0 + IMPORT_SECONDS
    assert (
        replace(w, step=None).deadline() is None
        and replace(w, plan=replace(plan, timeout=None)).deadline() is None
    )


def test_deferred_signals_wait_for_the_block_and_nest() -> None:
    import os
    import signal

    import pytest

    from specgrad.process import Terminated, deferred_signals, pending_signal

    with pytest.raises(Terminated):
        with deferred_signals():
            with deferred_signals():
                os.kill(os.getpid(), signal.SIGTERM)
                assert pending_signal() == signal.SIGTERM
            done = True  # the inner block did not raise
        assert not done  # unreachable: the outer block raised at its end
    assert pending_signal() is None
    with pytest.raises(ValueError):  # the block's own exception wins; the signal is dropped
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGINT)
            raise ValueError
    assert pending_signal() is None
