"""JUnit XML and the HTML report: what a CI dashboard and a person looking at a failure get.
Also the evidence the heatmaps are drawn from: it must put the error where the bug is."""

from __future__ import annotations

import base64
import re
from dataclasses import replace
from pathlib import Path

import junitparser
import numpy as np
import pytest

from specgrad.compile import compile_spec
from specgrad.errors import Location, SpecIssue
from specgrad.reporting import heatmap
from specgrad.reporting.console import failure_text
from specgrad.reporting.html_report import HtmlReporter
from specgrad.reporting.junit_report import JunitReporter
from specgrad.results import RunSummary, Status
from specgrad.runner import run_spec
from specgrad.validate import parse_spec
from tests.conftest import FIXTURES

BUGGY = FIXTURES / "buggy"


def _run(name: str, **options: object) -> RunSummary:
    spec = parse_spec(BUGGY / f"{name}.yaml")
    summary = RunSummary()
    summary.results.extend(run_spec(spec, compile_spec(spec, **options)))  # type: ignore[arg-type]
    return summary


@pytest.fixture(scope="module")
def border() -> RunSummary:
    return _run("conv2d_border")


def _result(summary: RunSummary, target: str):  # type: ignore[no-untyped-def]
    return next(r for r in summary.results if r.target == target)


def test_failing_check_keeps_its_evidence_a_passing_one_does_not(border: RunSummary) -> None:
    x, w = _result(border, "x"), _result(border, "w")
    assert x.status is Status.FAIL and x.evidence is not None
    assert w.status is Status.PASS and w.evidence is None
    ev = x.evidence
    assert ev.shape == (2, 3, 8, 8) and ev.tensor == "x"
    assert np.isfinite(ev.error).all() and np.isfinite(ev.bound).all()


def test_evidence_puts_the_error_on_the_border_only(border: RunSummary) -> None:
    """The border-only bug: out of bound exactly on the first/last rows and columns."""
    ev = _result(border, "x").evidence
    out = ev.ratio > 1
    ring = np.zeros((8, 8), dtype=bool)
    ring[[0, -1], :] = ring[:, [0, -1]] = True
    assert (out == np.broadcast_to(ring, out.shape)).all()
    # the figures agree with the check's own: the worst element is the comparison's
    c = _result(border, "x").comparison
    worst = np.unravel_index(ev.worst(1)[0], ev.shape)
    assert tuple(int(i) for i in worst) == c.worst_index
    assert abs(ev.analytical[worst] - c.analytical) < 1e-12


def test_sampled_check_has_nan_where_elements_were_left_out() -> None:
    summary = _run("conv2d_border", max_elements=40, mode="per-element")  # no structure: a sample
    ev = _result(summary, "x").evidence
    checked = ~np.isnan(ev.error)
    assert 0 < checked.sum() <= 40 and np.isnan(ev.analytical[~checked]).all()
    assert len(ev.worst(1000)) == checked.sum()


def test_wrong_channel_shows_in_that_channel_only() -> None:
    ev = _result(_run("conv2d_channel"), "w").evidence
    out = (ev.ratio > 1).any(axis=(0, 2, 3))
    assert out.tolist() == [False, True, False]


def test_panels_and_grid() -> None:
    assert heatmap.as_panels(np.zeros(())).shape == (1, 1, 1, 1)
    assert heatmap.as_panels(np.zeros(7)).shape == (1, 1, 1, 7)
    assert heatmap.as_panels(np.zeros((3, 5))).shape == (1, 1, 3, 5)
    assert heatmap.as_panels(np.zeros((4, 3, 5))).shape == (1, 4, 3, 5)
    assert heatmap.as_panels(np.zeros((2, 4, 3, 5))).shape == (2, 4, 3, 5)
    assert heatmap.as_panels(np.zeros((2, 3, 4, 3, 5))).shape == (6, 4, 3, 5)
    # more channels than fit: the ones with the largest errors are kept, in order
    ratio = np.zeros((2, 40, 4, 4))
    ratio[1, 33, 2, 2] = 5.0
    ratio[0, 7, 0, 0] = 3.0
    g = heatmap.grid(ratio.shape, ratio)
    assert len(g.cols) == heatmap.MAX_COLS and 33 in g.cols and 7 in g.cols and list(g.cols) == sorted(g.cols)
    assert g.col_count == 40 and g.rows == (0, 1)
    # NaN (not sampled) never wins a place over a checked element
    ratio = np.full((1, 30, 2, 2), np.nan)
    ratio[0, 29] = 0.5
    assert 29 in heatmap.grid(ratio.shape, ratio).cols


@pytest.mark.skipif(bool(heatmap.unavailable()), reason="matplotlib is not installed")
@pytest.mark.parametrize("shape", [(), (7,), (3, 5), (4, 3, 5), (2, 3, 4, 4), (2, 3, 2, 2, 2)])
def test_png_for_every_rank(shape: tuple[int, ...]) -> None:
    from specgrad.results import Evidence

    rng = np.random.default_rng(0)
    a = rng.normal(size=shape)
    n = a.copy()
    n.reshape(-1)[0] += 1.0
    ev = Evidence("t", a, a, n, np.full(shape, 1e-6), np.abs(a - n))
    data = heatmap.png(ev, "t")
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 2000


def test_junit_loads_in_a_junit_parser(tmp_path: Path, border: RunSummary) -> None:
    summary = RunSummary(results=list(border.results))
    summary.spec_errors.append(SpecIssue(Location(Path("bad.yaml"), 3, 1), "inputs", "expected a mapping"))
    noisy = replace(
        _result(summary, "b"),
        status=Status.ERROR,
        message="raised \x1b[31mValueError\x00 <here> & there",
        check_id="conv2d_border[float64,random]::b-noisy",
    )
    summary.results.append(noisy)
    path = tmp_path / "r.xml"
    JunitReporter(path).write(summary)
    xml = junitparser.JUnitXml.fromfile(str(path))
    cases = {c.name: c for suite in xml for c in suite}
    n = len(summary.results)
    assert xml.tests == n + 1 and len(cases) == n + 1
    x = cases["conv2d_border[float64,random]::x"]
    (failure,) = x.result
    assert isinstance(failure, junitparser.Failure)
    assert failure.text == failure_text([_result(summary, "x")])
    assert failure.message.startswith("gradient of x is wrong at 168 of 384 elements")
    assert x.classname == "conv2d_border" and x._elem.get("line") == "7"
    (error,) = cases["conv2d_border[float64,random]::b-noisy"].result
    assert (
        isinstance(error, junitparser.Error) and "<here> & there" in error.text and "\x1b" not in error.text
    )
    (invalid,) = cases["bad.yaml"].result
    assert (
        isinstance(invalid, junitparser.Error) and "bad.yaml:3:1: inputs: expected a mapping" in invalid.text
    )
    assert xml.failures == summary.count(Status.FAIL) and xml.errors == 2
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temp file left


def test_html_is_self_contained_with_a_picture_per_failing_gradient(
    tmp_path: Path, border: RunSummary
) -> None:
    path = tmp_path / "r.html"
    HtmlReporter(path).write(border)
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", text)  # nothing external
    assert "<script" not in text
    for r in border.results:
        assert r.check_id in text
    images = re.findall(
        r'<img class="heatmap" alt="heatmaps of ([^"]+)" src="data:image/png;base64,([^"]+)"', text
    )
    if heatmap.unavailable():
        assert not images and "matplotlib is not installed" in text
        return
    assert [name for name, _ in images] == ["conv2d_border[float64,random]::x"]
    assert base64.b64decode(images[0][1]).startswith(b"\x89PNG")
    assert "168 passed" not in text and f"{border.count(Status.PASS)} passed" in text


def test_html_without_matplotlib_says_so(
    tmp_path: Path, border: RunSummary, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        heatmap, "unavailable", lambda: "matplotlib is not installed, so the report has no heatmaps"
    )
    text = HtmlReporter(tmp_path / "r.html").render(border)
    assert "matplotlib is not installed" in text and "<img" not in text


def test_html_escapes_what_user_code_says(tmp_path: Path, border: RunSummary) -> None:
    r = _result(border, "contract.taylor")
    odd = replace(r, message="<script>alert(1)</script>")
    summary = RunSummary(results=[odd])
    text = HtmlReporter(tmp_path / "r.html").render(summary)
    assert "<script>alert" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_mosaic_tiles_with_gaps() -> None:
    panels = np.arange(2 * 3 * 2 * 2, dtype=float).reshape(2, 3, 2, 2)
    m = heatmap.mosaic(panels, (0, 1), (0, 2))
    assert m.shape == (5, 5) and np.isnan(m[2]).all() and np.isnan(m[:, 2]).all()
    assert (m[:2, :2] == panels[0, 0]).all() and (m[3:, 3:] == panels[1, 2]).all()


@pytest.mark.skipif(bool(heatmap.unavailable()), reason="matplotlib is not installed")
def test_non_finite_gradients_are_drawn_apart_from_unchecked_elements() -> None:
    import io

    from matplotlib.image import imread

    from specgrad.results import Evidence

    a = np.ones((4, 4))
    a[1, 2] = np.nan
    n = np.ones((4, 4))
    error = np.zeros((4, 4))
    error[1, 2] = np.inf
    pixels = imread(io.BytesIO(heatmap.png(Evidence("t", a, a, n, np.full((4, 4), 1e-6), error), "t")))
    green = np.all(np.abs(pixels[..., :3] - np.array([0x39, 0xFF, 0x14]) / 255) < 0.02, axis=-1)
    assert green.any()
    error[1, 2] = np.nan  # not checked: grey, no green
    a[1, 2] = np.nan
    n[1, 2] = np.nan
    pixels = imread(io.BytesIO(heatmap.png(Evidence("t", a, a, n, np.full((4, 4), 1e-6), error), "t")))
    green = np.all(np.abs(pixels[..., :3] - np.array([0x39, 0xFF, 0x14]) / 255) < 0.02, axis=-1)
    assert not green.any()


def test_a_picture_that_fails_or_is_interrupted_never_costs_the_report(
    tmp_path: Path, border: RunSummary, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(heatmap, "unavailable", lambda: "")

    def broken(*_: object) -> bytes:
        raise ValueError("no backend")

    monkeypatch.setattr(heatmap, "png", broken)
    reporter = HtmlReporter(tmp_path / "r.html")
    reporter.write(border)
    assert "(no picture: drawing it failed: ValueError: no backend)" in (tmp_path / "r.html").read_text()
    assert not reporter.interrupted

    def stopped(*_: object) -> bytes:
        raise KeyboardInterrupt

    monkeypatch.setattr(heatmap, "png", stopped)
    reporter = HtmlReporter(tmp_path / "r.html")
    reporter.write(border)
    assert (
        reporter.interrupted and "(no picture: drawing was interrupted)" in (tmp_path / "r.html").read_text()
    )


def test_checks_from_a_base_spec_point_at_the_base_line() -> None:
    """`extends:` brings tensors in from a base file: the line is the base's, with its file."""
    from tests.conftest import SPECS

    spec = parse_spec(SPECS / "frameworks" / "linear.yaml")
    plan = next(p for p in compile_spec(spec) if p.spec.implementation == "torch")
    origin = plan.origin("x")
    assert origin.file.name == "linear.yaml" and origin.file.parent.name == "specs" and origin.line == 8
    r = plan.result("x", Status.PASS)
    assert (
        r.line == 8 and r.line_file.endswith("specs/linear.yaml") and r.where.endswith("specs/linear.yaml:8")
    )
    assert r.to_dict()["line_file"] == r.line_file
