"""The pytest plugin, driven by pytester: spec files become items named by check id, with the
CLI's verdicts, figures and failure text, under pytest-xdist too."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from specgrad.cli import main
from specgrad.reporting.json_report import _clean
from tests.conftest import FIXTURES, SPECS

BUGGY = FIXTURES / "buggy"
XDIST = ("-p", "no:cacheprovider", "-p", "xdist", "-n", "2")
_OUTCOME = {"PASS": "passed", "SKIP": "skipped", "FAIL": "failed", "ERROR": "failed"}


@pytest.fixture
def buggy(pytester: pytest.Pytester) -> Path:
    for f in BUGGY.iterdir():
        if f.is_file():
            shutil.copy(f, pytester.path / f.name)
    (pytester.path / "ci.yaml").write_text("jobs:\n  test: {runs-on: ubuntu}\n")  # another tool's YAML
    return pytester.path


def _cli_report(folder: Path, tmp: Path, *args: str) -> dict[str, Any]:
    report = tmp / "cli.json"
    main(["validate", str(folder), "-j", "1", "-q", "--json", str(report), *args])
    return {c["id"]: c for c in json.loads(report.read_text())["checks"]}


def _id_of(nodeid: str) -> str:
    """FILE::NAME::TARGET[DTYPE,CASE] -> NAME[DTYPE,CASE]::TARGET (the CLI's check id)."""
    _, name, rest = nodeid.split("::", 2)
    target, _, bracket = rest.partition("[")
    return f"{name}[{bracket}::{target}"


class Recorder:
    """Each check item's result, as the CLI's JSON writes it."""

    def __init__(self) -> None:
        self.results: dict[str, dict[str, Any]] = {}
        self.locations: dict[str, tuple[str, int | None, str]] = {}

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
        report = yield
        result = getattr(item, "result", None)
        if call.when == "call" and result is not None:
            self.results[item.check_id] = json.loads(json.dumps(_clean(result.to_dict())))  # as in the JSON
        self.locations[item.nodeid] = item.location
        return report


def test_items_are_the_cli_checks_with_the_same_verdicts_and_figures(
    buggy: Path, pytester: pytest.Pytester, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = _cli_report(buggy, tmp_path)
    capsys.readouterr()
    recorder = Recorder()
    run = pytester.inline_run("-p", "no:cacheprovider", plugins=[recorder])
    reports = {
        r.nodeid: r for r in run.getreports("pytest_runtest_logreport") if r.when == "call" or r.skipped
    }
    by_name = {
        _id_of(nodeid) if nodeid.count("::") == 2 else nodeid.split("::")[1]: r
        for nodeid, r in reports.items()
    }
    assert set(by_name) == set(cli) | {"invalid-spec"}
    for check_id, c in cli.items():
        assert by_name[check_id].outcome == _OUTCOME[c["status"]], check_id
        if c["status"] != "SKIP":
            got = {k: v for k, v in recorder.results[check_id].items() if k != "duration_s"}
            assert got == {k: v for k, v in c.items() if k != "duration_s"}, check_id
    assert by_name["invalid-spec"].outcome == "failed"
    assert not any("ci.yaml" in nodeid for nodeid in reports)


def test_failure_report_is_the_cli_text_and_points_at_the_spec_line(
    buggy: Path, pytester: pytest.Pytester
) -> None:
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "conv2d_border.yaml", "invalid.yaml", "-k", "x or invalid"
    )
    result.assert_outcomes(failed=2)  # ...::x and the invalid spec
    result.stdout.fnmatch_lines(
        [
            "*_ conv2d_border[[]float64,random[]]::x _*",
            "FAIL conv2d_border[[]float64,random[]]::x",
            f"  {buggy / 'conv2d_border.yaml'}:7: conv2d_border [[]float64, case random[]]",
            "  gradient of x is wrong at 168 of 384 elements; worst x[[]1, 2, 7, 3[]]: *",
            "  Taylor test agrees, the gradient is wrong: *",
            "*invalid spec invalid.yaml*",
            f"  {buggy / 'invalid.yaml'}:1:1: missing required field 'inputs'",
            f"  {buggy / 'invalid.yaml'}:6:1: inptus: unknown field 'inptus' (did you mean 'inputs'?)*",
        ]
    )
    assert "Traceback" not in result.stdout.str()


def test_reportinfo_gives_the_real_line(buggy: Path, pytester: pytest.Pytester) -> None:
    recorder = Recorder()
    pytester.inline_run("-p", "no:cacheprovider", "--collect-only", plugins=[recorder])
    items = pytester.getitems(buggy / "conv2d_border.yaml")
    where = {item.name: item.reportinfo() for item in items}
    assert where["x[float64,random]"] == (buggy / "conv2d_border.yaml", 6, "conv2d_border[float64,random]::x")
    assert where["b[float64,random]"][1] == 9  # 0-based: `b:` is on line 10
    assert where["contract.taylor[float64,random]"][1] == 12  # `cases:`
    (invalid,) = pytester.getitems(buggy / "invalid.yaml")
    assert invalid.reportinfo()[1] == 0


@pytest.mark.parametrize(
    ("args", "count"),
    [
        (["-k", "linear_transposed and float32 and not contract"], 6),
        (["-m", "float64 and case_special"], 22),
        (["-m", "specgrad(kind='gradient') and float32"], 12),
        (["linear_transposed.yaml::linear_transposed::w[float64,random]"], 1),
    ],
)
def test_selection(buggy: Path, pytester: pytest.Pytester, args: list[str], count: int) -> None:
    result = pytester.runpytest("-p", "no:cacheprovider", "--collect-only", "-q", *args)
    assert sum("::" in line for line in result.stdout.lines) == count, result.stdout.str()


def test_options_and_configuration(buggy: Path, pytester: pytest.Pytester) -> None:
    only = pytester.runpytest(
        "-p", "no:cacheprovider", "--collect-only", "-q", "--specgrad-dtype", "float64", "relu_ok.yaml"
    )
    assert all("float64" in line for line in only.stdout.lines if "::" in line)
    (buggy / "pyproject.toml").write_text('[tool.specgrad]\ndtypes = ["float32"]\nseed = 5\n')
    configured = pytester.runpytest("-p", "no:cacheprovider", "--collect-only", "-q", "relu_ok.yaml")
    assert all("float32" in line for line in configured.stdout.lines if "::" in line)
    (buggy / "pyproject.toml").write_text("[tool.specgrad]\nseeed = 5\n")
    bad = pytester.runpytest("-p", "no:cacheprovider", "relu_ok.yaml")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert "tool.specgrad.seeed: unknown setting 'seeed' (did you mean 'seed'?)" in bad.stderr.str()


def _outcomes(xml: Path) -> dict[str, str]:
    """check id (pytest's JUnit file carries it as the testcase property check_id) -> outcome."""
    out = {}
    for case in ET.parse(xml).iter("testcase"):
        kinds = {child.tag for child in case}
        prop = case.find("properties/property[@name='check_id']")
        name = prop.get("value", "") if prop is not None else case.get("name", "")
        out[name] = (
            "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
        )
    return out


def test_xdist_gives_the_same_results(buggy: Path, pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytest.importorskip("xdist")
    one = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--junit-xml", str(tmp_path / "one.xml"))
    two = pytester.runpytest_subprocess(*XDIST, "--junit-xml", str(tmp_path / "two.xml"))
    scoped = pytester.runpytest_subprocess(
        *XDIST, "--dist", "loadscope", "--junit-xml", str(tmp_path / "three.xml")
    )
    assert one.ret == two.ret == scoped.ret == pytest.ExitCode.TESTS_FAILED
    first = _outcomes(tmp_path / "one.xml")
    assert len(first) == 143 and first == _outcomes(tmp_path / "two.xml") == _outcomes(tmp_path / "three.xml")


def test_the_zoo_under_pytest_agrees_with_validate(
    pytester: pytest.Pytester, tmp_path: Path, zoo_report: dict[str, Any]
) -> None:
    """`pytest specs/` and `specgrad validate specs/`: the same checks, the same verdicts."""
    pytest.importorskip("xdist")
    shutil.copytree(SPECS, pytester.path / "specs")
    result = pytester.runpytest_subprocess(
        *XDIST, "--dist", "loadscope", "specs", "--junit-xml", str(tmp_path / "z.xml")
    )
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-3000:]
    got = _outcomes(tmp_path / "z.xml")
    want = {c["id"]: _OUTCOME[c["status"]] for c in zoo_report["checks"]}
    assert got == want


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--specgrad-seed=-1"], "--specgrad-seed -1: expected an integer from 0 to 2**32-1"),
        (["--specgrad-seed=4294967296"], "expected an integer from 0 to 2**32-1"),
        (["--specgrad-max-elements=0"], "--specgrad-max-elements 0: expected a positive integer"),
        (["--specgrad-device=tpu"], "unknown device 'tpu'"),
        (["--specgrad-max-memory=lots"], "expected a size such as 512M"),
    ],
)
def test_bad_options_are_usage_errors(
    buggy: Path, pytester: pytest.Pytester, args: list[str], message: str
) -> None:
    result = pytester.runpytest("-p", "no:cacheprovider", "relu_ok.yaml", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str(), result.stderr.str()


def test_an_unusable_device_is_an_error_not_a_green_run(buggy: Path, pytester: pytest.Pytester) -> None:
    from specgrad.backends import unavailable

    if not unavailable("gpu"):
        pytest.skip("this machine has a usable GPU")
    result = pytester.runpytest("-p", "no:cacheprovider", "relu_ok.yaml", "--specgrad-device", "gpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR and "cupy" in result.stderr.str()


def test_duplicate_spec_names_are_the_second_file_s_error(buggy: Path, pytester: pytest.Pytester) -> None:
    """As `specgrad validate`: check ids must be unique across files."""
    (buggy / "z_again.yaml").write_text((buggy / "relu_ok.yaml").read_text())
    result = pytester.runpytest("-p", "no:cacheprovider", "relu_ok.yaml", "z_again.yaml")
    result.assert_outcomes(passed=58, skipped=2, failed=1)
    result.stdout.fnmatch_lines(
        ["*z_again.yaml:2:7: name: spec name 'relu_ok' is already used by *relu_ok.yaml:2:7*"]
    )
