"""The CLI's reports and tools end to end: JUnit and HTML (opened in headless Chromium
where it is installed), `new`, `schema`, `explain`, [tool.specgrad], the progress bar."""

from __future__ import annotations

import html
import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import junitparser
import pytest

from specgrad.reporting import heatmap
from tests.conftest import FIXTURES, REPO, SPECS

BUGGY = FIXTURES / "buggy"


@pytest.fixture(scope="module")
def buggy_reports(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("reports")
    reports = [
        "--json",
        str(out / "r.json"),
        "--junit-xml",
        str(out / "r.xml"),
        "--html",
        str(out / "r.html"),
    ]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "specgrad",
            "validate",
            str(BUGGY),
            "-j",
            "2",
            "-q",
            *reports,
        ],  # evidence crosses processes
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    return proc, out


def test_reports_of_a_buggy_folder_agree(
    buggy_reports: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    proc, out = buggy_reports
    assert proc.returncode == 2, proc.stdout + proc.stderr  # an invalid spec beside failing checks
    doc = json.loads((out / "r.json").read_text())
    xml = junitparser.JUnitXml.fromfile(str(out / "r.xml"))
    cases = {c.name: c for suite in xml for c in suite}
    for check in doc["checks"]:
        case = cases[check["id"]]
        kinds = [type(r).__name__ for r in case.result]
        want = {"PASS": [], "SKIP": ["Skipped"], "FAIL": ["Failure"], "ERROR": ["Error"]}[check["status"]]
        assert kinds == want, (check["id"], kinds)
    assert str(BUGGY / "invalid.yaml") in cases or "tests/fixtures/buggy/invalid.yaml" in str(list(cases))
    text = (out / "r.html").read_text()
    for check in doc["checks"]:
        assert html.escape(check["id"]) in text
    assert not list(out.glob(".*"))  # no temp file left behind


_CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
)

_PROBE = """<script>
window.addEventListener("load", () => {
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify([...document.images].map(
    (i) => ({alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight})));
  document.body.appendChild(out);
});
</script>
</body>"""


@pytest.mark.skipif(_CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
@pytest.mark.skipif(bool(heatmap.unavailable()), reason="matplotlib is not installed")
def test_html_renders_its_heatmaps_in_chromium(
    buggy_reports: tuple[subprocess.CompletedProcess[str], Path], tmp_path: Path
) -> None:
    """Open the report in headless Chromium: every heatmap decodes to a real picture."""
    _, out = buggy_reports
    page = tmp_path / "probe.html"
    page.write_text((out / "r.html").read_text().replace("</body>", _PROBE))
    proc = subprocess.run(
        [
            str(_CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.DOTALL)
    assert found, proc.stdout[-2000:] + proc.stderr[-2000:]
    images = json.loads(html.unescape(found.group(1)))
    drawn = {i["alt"] for i in images}
    assert {
        "heatmaps of conv2d_border[float64,random]::x",
        "heatmaps of conv2d_channel[float32,random]::w",
        "heatmaps of linear_transposed[float64,random]::w",
    } <= drawn
    assert all(i["complete"] and i["width"] > 150 and i["height"] > 150 for i in images), images


def test_new_writes_a_spec_that_lints_and_validates(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    args = [
        "new",
        "conv",
        "--forward",
        "specgrad.zoo.conv:forward",
        "--backward",
        "specgrad.zoo.conv:backward",
    ]
    args += ["--input", "x=1,2,5,5", "--param", "w=3,2,3,3", "--param", "b=3", "--attr", "padding=1"]
    made = cli(*args)
    assert made.code == 0 and "wrote conv.yaml" in made.out
    assert cli("lint", "conv.yaml").code == 0
    checked = cli("validate", "conv.yaml", "-q", "-j", "1")
    assert checked.code == 0, checked.text
    again = cli(*args)
    assert again.code == 2 and "conv.yaml exists; --force overwrites it" in again.err
    assert cli(*args, "--force").code == 0


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        (["--input", "x=2,0"], r"--input 'x=2,0': every dimension must be >= 1"),
        (["--input", "x=2", "--dtype", "float8"], r"--dtype 'float8'"),
        (["--input", "x=2", "-o", "out.txt"], r"ends in \.yaml"),
        ([], r"at least one --input"),
    ],
)
def test_new_refuses_bad_flags(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch, extra: list[str], pattern: str
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    result = cli("new", "l", "--forward", "m:f", "--backward", "m:b", *extra)
    assert result.code == 2 and re.search(pattern, result.err), result.err
    assert "Traceback" not in result.text and not list(tmp_path.glob("*.yaml"))


def test_schema_prints_the_shipped_schema(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("schema")
    assert result.code == 0
    assert json.loads(result.out) == json.loads((REPO / "schemas" / "spec.schema.json").read_text())


def test_explain(cli) -> None:  # type: ignore[no-untyped-def]
    failing = cli("explain", "conv2d_border[float64,random]::x", BUGGY / "conv2d_border.yaml")
    assert failing.code == 1
    assert failing.out.startswith("conv2d_border[float64,random]::x  FAIL")
    assert "worst elements of x (of 384 compared" in failing.out
    passing = cli("explain", "conv2d[float32,special]::w", SPECS, "--top", "3")
    assert passing.code == 0 and "PASS" in passing.out.splitlines()[0]
    unknown = cli("explain", "conv2d[float32,specal]::w", SPECS)
    assert unknown.code == 2 and "did you mean 'conv2d[float32,special]::w'" in unknown.err


PROJECT_SPEC = """\
specgrad: 1
name: scale
description: y = 2 x, from an import root
forward: scaling:forward
backward: scaling:backward
inputs:
  x: {shape: [3]}
dtypes: [float32, float64]
"""


def test_config_walks_up_and_flags_win(tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "p"\n[tool.specgrad]\npaths = ["checks"]\ndtypes = ["float64"]\nseed = 9\n'
        'import_roots = ["src"]\n'
    )
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "scaling.py").write_text(
        "def forward(x):\n    return 2 * x\n\ndef backward(g, x):\n    return 2 * g\n"
    )
    (tmp_path / "checks").mkdir()
    (tmp_path / "checks" / "scale.yaml").write_text(PROJECT_SPEC)
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    monkeypatch.setattr(sys, "path", list(sys.path))  # import_roots are added to it
    report = tmp_path / "r.json"
    result = cli("validate", "-j", "1", "--json", report)
    assert result.code == 0, result.text
    doc = json.loads(report.read_text())
    assert {c["dtype"] for c in doc["checks"]} == {"float64"} and {c["seed"] for c in doc["checks"]} == {9}
    flags = cli("validate", "-j", "1", "--dtype", "float32", "--seed", "3", "--json", report)
    assert flags.code == 0
    doc = json.loads(report.read_text())
    assert {c["dtype"] for c in doc["checks"]} == {"float32"} and {c["seed"] for c in doc["checks"]} == {3}
    assert cli("list").out.splitlines()[0] == "scale[float64,random]::x"


def test_bad_config_is_exit_2_with_its_line(tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "pyproject.toml").write_text('[tool.specgrad]\nseed = 1\nmod = "fast"\n')
    monkeypatch.chdir(tmp_path)
    result = cli("validate", SPECS / "relu.yaml")
    assert result.code == 2
    assert re.search(
        r"pyproject\.toml:3: tool\.specgrad\.mod: unknown setting 'mod' \(did you mean 'mode'\?\)", result.err
    )
    missing = cli("lint", SPECS / "relu.yaml", "--config", tmp_path / "nope.toml")
    assert missing.code == 2 and "nope.toml: cannot read the configuration" in missing.err


SLOW = """\
import time

def forward(x):
    time.sleep(0.004)
    return x * x

def backward(g, x):
    return 2 * g * x
"""


def _in_a_terminal(args: list[str], cwd: Path) -> tuple[int, bytes]:
    main, child = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "100", "TERM": "xterm-256color"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "specgrad", *args], stdout=child, stderr=child, cwd=cwd, env=env
    )
    os.close(child)
    out = b""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.2)
        if ready:
            try:
                data = os.read(main, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            out += data
        elif proc.poll() is not None:
            break
    os.close(main)
    return proc.wait(timeout=30), out


def test_progress_bar_on_a_terminal_plain_output_when_piped(tmp_path: Path) -> None:
    (tmp_path / "slow.py").write_text(SLOW)
    (tmp_path / "slow.yaml").write_text(
        PROJECT_SPEC.replace("scaling:", "slow:").replace("name: scale", "name: slow").replace("[3]", "[40]")
    )
    args = ["validate", "slow.yaml", "-j", "1", "--mode", "per-element"]
    code, out = _in_a_terminal(args, tmp_path)
    assert code == 0, out[-2000:]
    text = out.decode("utf-8", "replace")
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert "\x1b[" in text and re.search(r"\d+/60 checks", plain), plain[-2000:]
    piped = subprocess.run(
        [sys.executable, "-m", "specgrad", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": str(REPO), "FORCE_COLOR": "1"},
    )
    assert piped.returncode == 0 and "\x1b" not in piped.stdout + piped.stderr
    assert "checks" not in piped.stdout.replace("contract checks", "")


def test_interrupted_run_writes_every_report_complete(tmp_path: Path, write, cli) -> None:  # type: ignore[no-untyped-def]
    """Ctrl-C in user code: JSON, JUnit and HTML all hold the checks that finished."""
    from tests.e2e.test_cli import GOOD, LAYERS

    write(
        "layers.py",
        LAYERS
        + "\ndef stop(x, w):\n    if (x == 0.0).any():\n        raise KeyboardInterrupt\n    return x @ w\n",
    )
    write("a.yaml", GOOD)
    write("b.yaml", GOOD.replace("name: lin", "name: stop").replace("layers:forward", "layers:stop"))
    out = tmp_path / "out"
    result = cli(
        "validate",
        tmp_path,
        "-j",
        "1",
        "--json",
        out / "r.json",
        "--junit-xml",
        out / "r.xml",
        "--html",
        out / "r.html",
    )
    assert result.code == 130
    doc = json.loads((out / "r.json").read_text())
    xml = junitparser.JUnitXml.fromfile(str(out / "r.xml"))
    assert xml.tests == len(doc["checks"]) == doc["summary"]["passed"] > 0
    page = (out / "r.html").read_text()
    assert "interrupted" in page and page.rstrip().endswith("</html>")
    assert sorted(p.name for p in out.iterdir()) == ["r.html", "r.json", "r.xml"]
