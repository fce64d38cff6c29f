"""Reporters: console table and closing line, JSON content, atomic writes, exit codes."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from specgrad.errors import Location, SpecIssue
from specgrad.numerics.compare import Comparison
from specgrad.numerics.tolerance import DEFAULT_TOLERANCES
from specgrad.reporting import ConsoleReporter, JsonReporter, write_atomic
from specgrad.results import CheckResult, RunSummary, Status


def result(target: str, status: Status, message: str = "", nan: bool = False) -> CheckResult:
    comp = None
    if not target.startswith("contract."):
        comp = Comparison(
            status is Status.PASS,
            4,
            0 if status is Status.PASS else 1,
            float("nan") if nan else 1e-9,
            1e-7,
            (0, 1),
            1.0,
            1.5,
            1e-3,
            1e-12,
        )
    return CheckResult(
        f"s[float64,random]::{target}",
        "s",
        "s.yaml",
        "float64",
        "random",
        target,
        status,
        message,
        comp,
        DEFAULT_TOLERANCES["float64"] if comp else None,
        0.01,
    )


def summary() -> RunSummary:
    return RunSummary(
        results=[
            result("x", Status.PASS),
            result("w", Status.FAIL, "gradient of w is wrong [at] x[0, 1]"),
            result("contract.finite", Status.PASS),
            result("contract.no_mutation", Status.ERROR, "boom"),
            result("b", Status.SKIP),
        ]
    )


def test_closing_line_and_exit_codes() -> None:
    s = summary()
    assert s.closing_line() == "2 passed, 2 failed, 1 skipped"
    assert s.exit_code == 1
    assert RunSummary(results=[result("x", Status.PASS)]).exit_code == 0
    s.spec_errors.append(SpecIssue(Location(Path("a.yaml"), 3, 1), "name", "bad"))
    assert s.exit_code == 2


def test_console_table_details_and_markup_safety() -> None:
    out = io.StringIO()
    rep = ConsoleReporter(stream=out)
    rep.spec_results(summary().results)
    rep.closing(summary())
    text = out.getvalue()
    assert "FAIL s[float64,random]::w\n" in text
    assert "gradient of w is wrong [at] x[0, 1]" in text  # brackets are not eaten as markup
    assert "1 contract checks passed" in text
    assert "contract.no_mutation" in text  # not passing, so shown
    assert text.splitlines()[-1] == "2 passed, 2 failed, 1 skipped"
    assert "\x1b[" not in text


def test_console_quiet_prints_failures_only() -> None:
    out = io.StringIO()
    ConsoleReporter(stream=out, verbosity=-1).spec_results(summary().results)
    assert "max abs err" not in out.getvalue() and "FAIL s[float64,random]::w" in out.getvalue()


def test_console_spec_errors_are_located_lines() -> None:
    out = io.StringIO()
    ConsoleReporter(stream=out).spec_errors(
        [SpecIssue(Location(Path("a.yaml"), 3, 5), "inputs.x", "bad [x]")]
    )
    assert out.getvalue() == "a.yaml:3:5: inputs.x: bad [x]\n"


def test_json_report_is_strict_json(tmp_path: Path) -> None:
    s = RunSummary(
        results=[result("x", Status.FAIL, nan=True)],
        spec_errors=[SpecIssue(Location(Path("a.yaml"), 3, 5), "f", "m")],
    )
    path = tmp_path / "r.json"
    JsonReporter(path).write(s)
    doc = json.loads(path.read_text())  # would fail on a bare NaN
    assert doc["format"] == 1 and doc["exit_code"] == 2
    assert doc["checks"][0]["figures"]["max_abs_err"] == "nan"
    assert doc["checks"][0]["figures"]["worst_index"] == [0, 1]
    assert doc["spec_errors"] == [{"file": "a.yaml", "line": 3, "column": 5, "field": "f", "message": "m"}]


def test_write_atomic_never_leaves_a_torn_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "r.json"
    write_atomic(path, "old")

    def crash(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, "new" * 1000)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
