"""Reports read back (reporting/reader.py) and joined (merge.py): a JSON report comes back
whole, a JUnit report with what JUnit carries; shards are joined only when all of one
selection are there, once each."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from specgrad.errors import Location, SpecIssue
from specgrad.merge import merge
from specgrad.numerics.compare import Comparison
from specgrad.numerics.tolerance import Tolerance
from specgrad.reporting.json_report import JsonReporter
from specgrad.reporting.junit_report import JunitReporter
from specgrad.reporting.reader import ReportError, read_report
from specgrad.results import CheckResult, RunSummary, Shard, Status

FIGURES = Comparison(
    passed=False,
    size=12,
    violations=2,
    max_abs_err=float("inf"),
    max_rel_err=0.5,
    worst_index=(1, 2),
    analytical=1.0,
    numerical=float("nan"),
    bound=1e-6,
    noise_floor=1e-9,
    max_abs_numerical=3.0,
    worst_ratio=4.0,
    violating=(5, 6),
)


def _result(
    spec: str, target: str, status: Status = Status.PASS, device: str = "cpu", **more: object
) -> CheckResult:
    where = "" if device == "cpu" else f",{device}"
    return CheckResult(
        check_id=f"{spec}[float64,random{where}]::{target}",
        spec=spec,
        file=f"specs/{spec}.yaml",
        dtype="float64",
        case="random",
        target=target,
        status=status,
        device=device,
        line=7,
        duration=0.25,
        **more,  # type: ignore[arg-type]
    )


def _summary(*results: CheckResult, shard: Shard | None = None, **more: object) -> RunSummary:
    return RunSummary(results=list(results), shard=shard, **more)  # type: ignore[arg-type]


def _write(tmp_path: Path, name: str, summary: RunSummary) -> Path:
    path = tmp_path / name
    (JunitReporter if name.endswith(".xml") else JsonReporter)(path).write(summary)
    return path


def test_a_json_report_comes_back_whole(tmp_path: Path) -> None:
    full = _result(
        "conv",
        "w",
        Status.FAIL,
        message="wrong\nsecond line",
        comparison=FIGURES,
        tolerance=Tolerance(1e-6, 1e-7, 1e-3, reason="why", atol_given=True),
        numerical_dtype="float64",
        note="n",
        kinks=3,
        seed=42,
        method="colored: 4 groups",
        sample=(0, 5, 9),
        line_file="base.yaml",
    )
    issue = SpecIssue(Location(Path("bad.yaml"), 3, 5), "inputs.x", "expected a list")
    summary = _summary(
        full,
        _result("conv", "contract.taylor", Status.SKIP, message="no"),
        spec_errors=[issue],
        notes=["a note"],
        shard=Shard(2, 3, 99, "abc"),
        frameworks={"conv": {"torch": {"installed": "2.1", "verified_with": None}}},
        devices={"cpu": "numpy"},
        interrupted=True,
        signal=15,
    )
    back = read_report(_write(tmp_path, "r.json", summary))
    assert back.results[1] == summary.results[1]
    got, want = back.results[0], summary.results[0]
    assert got.comparison is not None and want.comparison is not None
    assert str(got.comparison) == str(want.comparison)  # NaN != NaN: compared as text
    assert replace(got, comparison=None) == replace(want, comparison=None)
    assert back.spec_errors == [issue] and back.notes == ["a note"] and back.shard == summary.shard
    assert back.frameworks == summary.frameworks and back.devices == summary.devices
    assert back.interrupted and back.signal == 15 and back.exit_code == 143


def test_a_junit_report_comes_back_with_what_junit_carries(tmp_path: Path) -> None:
    summary = _summary(
        _result("conv", "w", Status.FAIL, message="off by 2x\nat [0, 1]"),
        _result("conv", "x", Status.TIMEOUT, message="took longer than 5 s"),
        _result("conv", "b", Status.SKIP, message="not run"),
        _result("relu", "x", device="gpu"),
        spec_errors=[SpecIssue(Location(Path("bad.yaml"), 3, 5), "inputs.x", "expected a list")],
        shard=Shard(1, 2, 10, "abc"),
    )
    back = read_report(_write(tmp_path, "r.xml", summary))
    assert [(r.check_id, r.status, r.message, r.file, r.line, r.device) for r in back.results] == [
        (r.check_id, r.status, r.message, r.file, r.line, r.device) for r in summary.results
    ]
    assert back.results[0].target == "w" and back.results[3].device == "gpu"
    assert back.spec_errors == summary.spec_errors and back.shard == summary.shard


def test_an_empty_shard_keeps_its_facts_in_junit(tmp_path: Path) -> None:
    back = read_report(_write(tmp_path, "r.xml", _summary(shard=Shard(3, 3, 10, "abc"))))
    assert back.shard == Shard(3, 3, 10, "abc") and back.results == [] and back.exit_code == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "not a report"),
        ("hello", "not a report"),
        ("{not json", "not a readable report"),
        ('{"a": 1}', "not a readable report"),
        ('{"format": 99, "checks": []}', "format 99"),
        ('{"format": 1, "checks": [{"id": "x"}]}', "not a specgrad report"),
        ("<html></html>", "not JUnit"),
        (
            "<testsuites><testsuite><testcase name='nope'/></testsuite></testsuites>",
            "not a specgrad check id",
        ),
        ("<testsuites", "not a readable report"),
    ],
)
def test_a_file_that_is_not_a_report_is_a_located_error(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "r.json"
    path.write_text(text)
    with pytest.raises(ReportError, match=expected) as info:
        read_report(path)
    assert str(path) in str(info.value)
    with pytest.raises(ReportError, match="cannot read"):
        read_report(tmp_path / "missing.json")


def _shards(count: int, selection: str = "sel") -> list[tuple[Path, RunSummary]]:
    return [
        (Path(f"s{k}.json"), _summary(_result(f"spec{k}", "x"), shard=Shard(k, count, count, selection)))
        for k in range(1, count + 1)
    ]


def test_shards_join_into_one_run() -> None:
    shards = _shards(3)
    failing = _summary(_result("spec3", "x", Status.FAIL), shard=Shard(3, 3, 3, "sel"))
    merged = merge([shards[2], shards[0], shards[1]])
    assert [r.spec for r in merged.results] == ["spec1", "spec2", "spec3"] and merged.exit_code == 0
    assert merge([shards[0], shards[1], (Path("s3.json"), failing)]).exit_code == 1


@pytest.mark.parametrize(
    ("pick", "expected"),
    [
        (lambda s: s[:2], "shard 3/3 missing"),
        (lambda s: [s[0], s[0], s[1], s[2]], "shard 1/3 is given twice"),
        (lambda s: [*s[:2], _shards(3, "other")[2]], "another selection"),
        (lambda s: [*s, (Path("plain.json"), _summary(_result("z", "x")))], "not a shard's report"),
    ],
)
def test_an_incomplete_or_mixed_set_of_shards_is_refused(pick, expected: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ReportError, match=expected):
        merge(pick(_shards(3)))


def test_reports_that_overlap_are_refused_and_errors_are_not_repeated() -> None:
    one = _summary(_result("a", "x"))
    with pytest.raises(ReportError, match=r"a\[float64,random\]::x is in a.json and in b.json"):
        merge([(Path("a.json"), one), (Path("b.json"), one)])
    issue = SpecIssue(Location(Path("bad.yaml"), 1, 1), "name", "missing")
    a = _summary(_result("a", "x"), spec_errors=[issue], notes=["n", "shard 1/2 got no checks: ..."])
    b = _summary(_result("b", "x"), spec_errors=[issue], notes=["n"], interrupted=True, signal=15)
    merged = merge([(Path("a.json"), a), (Path("b.json"), b)])
    assert merged.spec_errors == [issue] and merged.notes == ["n"]
    assert merged.interrupted and merged.exit_code == 143


def test_junit_keeps_an_interrupt_and_internal_errors_apart(tmp_path: Path) -> None:
    internal = SpecIssue(Location(Path("a.yaml")), "", "internal error while checking this spec: boom")
    summary = _summary(_result("a", "x"), internal_errors=[internal], interrupted=True, signal=15)
    back = read_report(_write(tmp_path, "r.xml", summary))
    assert back.interrupted and back.signal == 15 and back.exit_code == 143
    assert back.internal_errors == [internal] and not back.spec_errors
    back.interrupted = False
    assert back.exit_code == 3


def test_a_spec_error_read_from_json_and_from_junit_is_one_error(tmp_path: Path) -> None:
    issue = SpecIssue(
        Location(Path("b.yaml"), 4, 10), "", "forward: cannot import module 'x': no module named 'x'"
    )
    a = read_report(_write(tmp_path, "a.json", _summary(_result("a", "x"), spec_errors=[issue])))
    b = read_report(_write(tmp_path, "b.xml", _summary(_result("b", "x"), spec_errors=[issue])))
    merged = merge([(Path("a.json"), a), (Path("b.xml"), b)])
    assert [str(i) for i in merged.spec_errors] == [str(issue)]


def test_a_complete_set_of_shards_holding_fewer_checks_is_refused() -> None:
    shards = [
        (Path(f"s{k}.json"), _summary(_result(f"spec{k}", "x"), shard=Shard(k, 2, 3, "sel"))) for k in (1, 2)
    ]
    with pytest.raises(ReportError, match="the shards hold 2 checks, their selection has 3"):
        merge(shards)
    stopped = (Path("s2.json"), _summary(_result("spec2", "x"), shard=Shard(2, 2, 3, "sel", complete=False)))
    assert merge([shards[0], stopped]).exit_code == 0  # it says it stopped early: its exit code told why
