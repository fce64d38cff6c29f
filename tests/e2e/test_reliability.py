"""What happens when things go wrong: a layer that segfaults, aborts, exits, hangs or needs
more memory than allowed; Ctrl-C and SIGTERM in the middle of a run; unsafe input. Each
costs only its own checks, says what happened, and every report stays complete."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from specgrad.cli import main
from tests.conftest import REPO, dedent

LAYERS = """
import ctypes
import os
import sys
import time
from pathlib import Path


def forward(x, w):
    return x @ w


def backward(g, x, w):
    return g @ w.T, x.T @ g


def _moved(w):
    return not (w == 0.5).all()  # w is filled with 0.5: it moves in its own checks only


def segv_when_w_moves(x, w):
    if _moved(w):
        ctypes.string_at(0)  # a real segmentation fault, in native code
    return x @ w


def abort_when_w_moves(x, w):
    if _moved(w):
        os.abort()
    return x @ w


def exit_when_w_moves(x, w):
    if _moved(w):
        os._exit(7)
    return x @ w


def hang_when_w_moves(x, w):
    while _moved(w):
        pass  # a busy loop: nothing but SIGKILL stops it
    return x @ w


def hang(x, w):
    time.sleep(float(os.environ.get("HANG_DELAY", "0")))  # with -j 2: let the other spec finish
    Path(os.environ["HANG_MARKER"]).write_text(str(os.getpid()))
    time.sleep(3600)
"""

SPEC = """\
specgrad: 1
name: {name}
description: matmul
forward: rel:{forward}
backward: rel:backward
inputs:
  x: {{shape: [2, 3]}}
parameters:
  w: {{shape: [3, 4], fill: {{kind: constant, value: 0.5}}}}
dtypes: [float64]
cases: [random]
method: {{mode: directional}}  # elementwise checks probe every tensor's precision first
{extra}"""


def _write(folder: Path, name: str, forward: str, extra: str = "") -> Path:
    (folder / "rel.py").write_text(dedent(LAYERS))
    path = folder / f"{name}.yaml"
    path.write_text(SPEC.format(name=name, forward=forward, extra=extra))
    return path


def _checks(report: Path) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in json.loads(report.read_text())["checks"]}


# -- isolation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "forward, death",
    [
        (
            "segv_when_w_moves",
            r"the worker was killed by SIGSEGV \(a segmentation fault: a crash in native code\)",
        ),
        ("abort_when_w_moves", r"the worker was killed by SIGABRT \(an abort: .*\)"),
        ("exit_when_w_moves", r"the worker exited with status 7 \(os\._exit, or exit\(\) in native code\)"),
    ],
)
def test_a_crash_in_one_gradient_check_costs_that_check_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], forward: str, death: str
) -> None:
    """-j 1 --isolate: the crash is w's ERROR, with the signal; x and the contracts (done before
    it) pass; the Taylor test (it would move w too) is not run; the next spec runs in a fresh
    worker."""
    _write(tmp_path, "a_crash", forward)
    _write(tmp_path, "b_good", "forward")
    report = tmp_path / "r.json"
    code = main(["validate", str(tmp_path), "-j", "1", "--isolate", "--json", str(report)])
    out = capsys.readouterr().out
    assert code == 1
    checks = _checks(report)
    w = checks["a_crash[float64,random]::w"]
    assert w["status"] == "ERROR" and re.search(death + r" during the gradient check of w", w["message"])
    assert "the run went on in a fresh worker" in w["message"]
    assert w["line"] == 9  # located at w's declaration
    assert checks["a_crash[float64,random]::x"]["status"] == "PASS"
    contracts = [c for i, c in checks.items() if i.startswith("a_crash") and "contract." in i]
    assert {c["status"] for c in contracts if not c["id"].endswith("taylor")} == {"PASS"}
    taylor = checks["a_crash[float64,random]::contract.taylor"]
    assert taylor["status"] == "ERROR" and taylor["message"].startswith("not run: the worker")
    assert {c["status"] for i, c in checks.items() if i.startswith("b_good")} == {"PASS"}
    assert re.search(death, out) and "Traceback" not in out


def test_a_hung_gradient_check_is_a_timeout_and_the_run_goes_on(tmp_path: Path) -> None:
    _write(tmp_path, "a_hang", "hang_when_w_moves")
    _write(tmp_path, "b_good", "forward")
    report = tmp_path / "r.json"
    start = time.monotonic()
    code = main(["validate", str(tmp_path), "-j", "2", "--timeout", "2", "--json", str(report)])
    assert time.monotonic() - start < 60
    assert code == 1
    checks = _checks(report)
    w = checks["a_hang[float64,random]::w"]
    assert w["status"] == "TIMEOUT"
    assert w["message"].startswith(
        "the gradient check of w took longer than 2 s (--timeout or [tool.specgrad] timeout)"
    )
    assert checks["a_hang[float64,random]::x"]["status"] == "PASS"
    assert checks["a_hang[float64,random]::contract.forward_output"]["status"] == "PASS"
    assert {c["status"] for i, c in checks.items() if i.startswith("b_good")} == {"PASS"}
    assert json.loads(report.read_text())["summary"]["timeouts"] == 1


def test_a_spec_timeout_wins_over_the_flag_and_isolates_by_itself(tmp_path: Path) -> None:
    """`timeout: 1` in the spec stops a hang that --timeout 1000 would wait out, and with no
    --timeout or -j at all the spec's own timeout still runs it in a worker."""
    _write(tmp_path, "a_hang", "hang_when_w_moves", "timeout: 1\n")
    for flags in (["--timeout", "1000"], []):
        report = tmp_path / "r.json"
        assert main(["validate", str(tmp_path), "-j", "1", "--json", str(report), *flags]) == 1
        w = _checks(report)["a_hang[float64,random]::w"]
        assert w["status"] == "TIMEOUT" and "took longer than 1 s (its spec's timeout:)" in w["message"]


def test_a_hang_in_the_first_calls_times_out_the_contracts(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    _write(tmp_path, "a_hang", "hang")
    os.environ["HANG_MARKER"] = str(tmp_path / "m" / "pid")
    try:
        report = tmp_path / "r.json"
        assert main(["validate", str(tmp_path), "-j", "1", "--timeout", "1", "--json", str(report)]) == 1
    finally:
        del os.environ["HANG_MARKER"]
    checks = _checks(report)
    for target in ("contract.forward_output", "contract.backward_grads"):
        c = checks[f"a_hang[float64,random]::{target}"]
        assert c["status"] == "TIMEOUT" and c["message"].startswith(
            "the case's forward and backward calls took"
        )
    x = checks["a_hang[float64,random]::x"]
    assert x["status"] == "ERROR" and x["message"].startswith(
        "not run: the case's forward and backward calls"
    )
    _gone(int((tmp_path / "m" / "pid").read_text()))


def test_the_project_settings_isolate_and_time_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """isolate = true and timeout = 1 in [tool.specgrad] act as --isolate and --timeout 1."""
    _write(tmp_path, "a_crash", "segv_when_w_moves")
    _write(tmp_path, "b_hang", "hang_when_w_moves")
    (tmp_path / "pyproject.toml").write_text("[tool.specgrad]\nisolate = true\ntimeout = 1\njobs = 1\n")
    monkeypatch.chdir(tmp_path)
    assert main(["validate", ".", "--json", "r.json"]) == 1
    checks = _checks(tmp_path / "r.json")
    assert "killed by SIGSEGV" in checks["a_crash[float64,random]::w"]["message"]
    assert checks["b_hang[float64,random]::w"]["status"] == "TIMEOUT"


class _Quiet:
    """A worker's observer that keeps nothing (for `_work` called directly)."""

    current, results = None, []

    def step(self, *args: Any) -> None:
        pass

    def result(self, result: Any) -> None:
        pass


def _gone(pid: int) -> None:
    """The process `pid` (a worker) no longer exists (within a few seconds)."""
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"worker {pid} outlived the run")


# -- interruption -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sig, flags, code",
    [
        (signal.SIGINT, ["-j", "1", "--isolate"], 130),
        (signal.SIGTERM, ["-j", "2"], 143),
        (signal.SIGTERM, ["-j", "1"], 143),  # in process: the handler stops the layer's sleep
    ],
    ids=["sigint-worker", "sigterm-workers", "sigterm-in-process"],
)
def test_an_interrupt_stops_cleanly_and_every_report_is_complete(
    tmp_path: Path, sig: signal.Signals, flags: list[str], code: int
) -> None:
    """The layer of b_hang sleeps (writing its pid first): by then a_good's checks are done
    (with -j 2 they run side by side: b_hang waits 5 s first).
    The signal ends the run: exit 128 + signal, the finished checks in the console, the JSON
    and the JUnit report, both well-formed, and no worker left behind."""
    _write(tmp_path, "a_good", "forward")
    _write(tmp_path, "b_hang", "hang")
    marker = tmp_path / "pid"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HANG_MARKER": str(marker)}
    env["HANG_DELAY"] = "5" if "2" in flags else "0"
    cmd = [sys.executable, "-m", "specgrad", "validate", ".", *flags]
    cmd += ["--json", "r.json", "--junit-xml", "r.xml", "-q"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        for _ in range(600):
            if marker.is_file() and marker.read_text():
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the layer never started")
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, out
    by = "SIGTERM" if sig == signal.SIGTERM else "Ctrl-C"
    assert f"interrupted ({by}): the results above are the checks that finished" in out
    assert "Traceback" not in out
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["interrupted"] is True and doc["exit_code"] == code
    assert doc["signal"] == ("SIGTERM" if sig == signal.SIGTERM else "SIGINT")
    good = [c for c in doc["checks"] if c["spec"] == "a_good"]
    assert len(good) == 11 and {c["status"] for c in good} == {"PASS"}
    suites = ET.parse(tmp_path / "r.xml").getroot()
    assert sum(1 for _ in suites.iter("testcase")) == len(doc["checks"])
    assert not list(tmp_path.glob("*.tmp*")) and not list(tmp_path.glob(".r.*"))
    pid = int(marker.read_text())
    if pid != proc.pid:
        _gone(pid)


# -- memory -----------------------------------------------------------------------------------


def test_a_check_over_max_memory_is_refused_with_its_estimate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "rel.py").write_text(dedent(LAYERS))
    (tmp_path / "big.yaml").write_text(
        SPEC.format(name="big", forward="forward", extra="").replace("[2, 3]", "[300, 3]")
    )
    report = tmp_path / "r.json"
    assert main(["validate", str(tmp_path), "-j", "1", "--max-memory", "256K", "--json", str(report)]) == 1
    out = capsys.readouterr().out
    checks = _checks(report)
    x = checks["big[float64,random]::x"]
    assert x["status"] == "ERROR"
    assert re.match(
        r"refused before running: the gradient check of x needs an estimated [\d.]+ KiB \(tensors .*, "
        r"per-element figures .*, outputs .*\), over the memory limit of 256\.0 KiB \(--max-memory or \[tool\.specgrad\] max_memory\)",
        x["message"],
    ), x["message"]
    assert checks["big[float64,random]::w"]["status"] == "PASS"  # 12 elements: fits
    assert "refused before running" in out
    assert main(["validate", str(tmp_path), "-j", "1", "-q"]) == 0  # the default limit: the machine's


# -- safety -----------------------------------------------------------------------------------


def test_yaml_never_constructs_objects(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "PWNED"
    payloads = [
        f'name: !!python/object/apply:os.system ["touch {marker}"]',
        f"name: !!python/object/new:subprocess.Popen [[touch, {marker}]]",
        "name: !!python/name:os.system",
        'name: !!binary "aGVsbG8="',
    ]
    for i, payload in enumerate(payloads):
        (tmp_path / f"p{i}.yaml").write_text(f"specgrad: 1\n{payload}\ndescription: d\n")
    for command in ("lint", "list", "validate"):
        assert main([command, str(tmp_path)]) == 2
        text = capsys.readouterr()
        found = re.findall(r"p(\d)\.yaml:2:7: name: unsupported YAML tag", text.out + text.err)
        assert sorted(found) == ["0", "1", "2", "3"], text
    assert not marker.exists()


def test_fixture_paths_stay_inside_the_project(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "project"
    (project / "specs").mkdir(parents=True)
    (project / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    np.save(project / "x.npy", np.ones((2, 3)))
    np.save(tmp_path / "outside.npy", np.ones((2, 3)))
    (project / "specs" / "link.npy").symlink_to(tmp_path / "outside.npy")
    (project / "specs" / "rel.py").write_text(dedent(LAYERS))
    text = SPEC.format(name="s", forward="forward", extra="")
    fills = {
        "inside": ("../x.npy", ""),  # above the spec's folder, inside the project: fine
        "up": ("../../outside.npy", None),
        "absolute": (str(tmp_path / "outside.npy"), None),
        "symlink": ("link.npy", None),
        "allowed": ("../../outside.npy", ", allow_outside_root: true"),
    }
    for name, (path, allow) in fills.items():
        fill = f"{{shape: [2, 3], fill: {{kind: npy, path: {path}{allow or ''}}}}}"
        spec = text.replace("name: s", f"name: {name}").replace("{shape: [2, 3]}", fill)
        (project / "specs" / f"{name}.yaml").write_text(spec)
    assert main(["lint", str(project / "specs")]) == 2
    out = capsys.readouterr().out
    refused = re.findall(r"(\w+)\.yaml:7:\d+: inputs\.x\.fill\.path: .* outside the spec's project", out)
    assert sorted(refused) == ["absolute", "symlink", "up"], out
    assert f"outside the spec's project {project.resolve()}" in out
    assert "ok " in out and "inside.yaml" in out and "allowed.yaml" in out


def test_npy_fixtures_never_unpickle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "rel.py").write_text(dedent(LAYERS))
    np.save(tmp_path / "obj.npy", np.array([[{}, 1, 2], [3, 4, 5]], dtype=object), allow_pickle=True)
    fill = "{shape: [2, 3], fill: {kind: npy, path: obj.npy}}"
    (tmp_path / "s.yaml").write_text(
        SPEC.format(name="s", forward="forward", extra="").replace("{shape: [2, 3]}", fill)
    )
    assert main(["validate", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert re.search(
        r"s\.yaml:7:\d+: inputs\.x\.fill\.path: .*obj\.npy holds Python objects \(a pickle\)", out
    ), out


def test_lint_and_list_import_no_user_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "rel.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('x')\n" + dedent(LAYERS)
    )
    (tmp_path / "s.yaml").write_text(SPEC.format(name="s", forward="forward", extra=""))
    assert main(["lint", str(tmp_path)]) == 0
    assert main(["list", str(tmp_path)]) == 0
    assert not marker.exists()
    assert main(["validate", str(tmp_path), "-j", "1", "-q"]) == 0
    assert marker.exists()  # the same module, imported when the checks run


@pytest.mark.parametrize(
    "target",
    ["rel:forward()", "rel:forward; import os", "__import__('os'):system", "rel.forward", "rel:forward\n"],
)
def test_import_strings_are_module_and_attribute_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    (tmp_path / "rel.py").write_text(dedent(LAYERS))
    spec = SPEC.format(name="s", forward="forward", extra="").replace(
        "forward: rel:forward", f"forward: {json.dumps(target)}"
    )
    (tmp_path / "s.yaml").write_text(spec)
    assert main(["validate", str(tmp_path), "-j", "1"]) == 2
    out = capsys.readouterr().out
    assert re.search(r"s\.yaml:4:10: forward: expected an import string 'package\.module:qualname'", out), out


# -- determinism ------------------------------------------------------------------------------


def test_same_verdicts_and_figures_in_any_order_with_any_workers_run_after_run(tmp_path: Path) -> None:
    """In process, isolated, three workers, the paths given in reverse, and again: every check's
    verdict, message and figures (sampled indices included) are the same, to the last bit."""
    from tests.conftest import SPECS

    names = ["linear", "softmax", "batchnorm", "maxpool2d"]
    for name in names:
        (tmp_path / f"{name}.yaml").write_text((SPECS / f"{name}.yaml").read_text())
    (tmp_path / "rel.py").write_text(
        dedent(LAYERS) + "\n\ndef buggy_backward(g, x, w):\n    return 1.01 * (g @ w.T), x.T @ g\n"
    )
    (tmp_path / "zbuggy.yaml").write_text(
        SPEC.format(name="zbuggy", forward="forward", extra="").replace("rel:backward", "rel:buggy_backward")
    )
    files = sorted(str(p) for p in tmp_path.glob("*.yaml"))
    runs = {
        "in process": [*files, "-j", "1"],
        "isolated": [*files, "-j", "1", "--isolate"],
        "3 workers": [*files, "-j", "3"],
        "reversed": [*reversed(files), "-j", "2"],
        "again": [*files, "-j", "1"],
    }
    seen: dict[str, dict[str, Any]] = {}
    for label, args in runs.items():
        report = tmp_path / f"{label}.json"
        assert main(["validate", *args, "-q", "--max-elements", "7", "--json", str(report)]) == 1
        seen[label] = {
            i: {k: v for k, v in c.items() if k != "duration_s"} for i, c in _checks(report).items()
        }
    first = seen["in process"]
    assert len(first) > 200 and any(c["status"] == "FAIL" for c in first.values())
    assert any("sample" in c for c in first.values())
    for label, checks in seen.items():
        assert checks == first, label
    assert list(seen["again"]) == list(first)  # and in the same order


# -- what a review found: races and corners ----------------------------------------------------


def test_more_than_one_worker_isolates_even_a_single_case(tmp_path: Path) -> None:
    """-j 2 with one case to run: still a worker (a crash is an ERROR, not the end)."""
    from tests.conftest import run_subprocess

    _write(tmp_path, "a_crash", "segv_when_w_moves")
    result = run_subprocess(["validate", "a_crash.yaml", "-j", "2", "--json", "r.json"], tmp_path)
    assert result.code == 1, result.text
    assert "killed by SIGSEGV" in _checks(tmp_path / "r.json")["a_crash[float64,random]::w"]["message"]


def test_ctrl_c_while_a_finished_job_waits_in_its_pipe_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The job is done (its message unread) when Ctrl-C lands: exit 130 and its checks reported."""
    import specgrad.workers as workers

    _write(tmp_path, "a_good", "forward")
    real_wait, calls = workers.wait, [0]

    def wait(objects: Any, timeout: float | None = None) -> Any:
        calls[0] += 1
        if calls[0] == 2:  # the job was handed out: let it finish, then Ctrl-C
            time.sleep(3.0)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
        return real_wait(objects, timeout)

    monkeypatch.setattr(workers, "wait", wait)
    report = tmp_path / "r.json"
    assert main(["validate", str(tmp_path), "--isolate", "-j", "1", "--json", str(report)]) == 130
    assert {c["status"] for c in _checks(report).values()} == {"PASS"} and len(_checks(report)) == 11


def test_ctrl_c_while_a_spec_is_reported_keeps_every_finished_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while the first spec's table prints (a_slow took 4 s: the others finished in the
    meantime): the table is finished, then every other finished spec is reported too."""
    from specgrad.reporting.console import ConsoleReporter

    slow = "\n\n_SLEPT = []\n\n\ndef slow(x, w):\n    if not _SLEPT:\n        _SLEPT.append(time.sleep(4))\n    return x @ w\n"
    (tmp_path / "rel.py").write_text(dedent(LAYERS) + slow)
    (tmp_path / "a_slow.yaml").write_text(SPEC.format(name="a_slow", forward="slow", extra=""))
    for name in ("b", "c", "d"):
        (tmp_path / f"{name}.yaml").write_text(SPEC.format(name=name, forward="forward", extra=""))
    real, sent = ConsoleReporter.spec_results, []

    def spec_results(self: ConsoleReporter, results: list[Any]) -> None:
        if results and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # deferred: the table still prints whole
        real(self, results)

    monkeypatch.setattr(ConsoleReporter, "spec_results", spec_results)
    report = tmp_path / "r.json"
    assert main(["validate", str(tmp_path), "-j", "2", "--json", str(report)]) == 130
    specs = {c["spec"] for c in _checks(report).values()}
    assert specs == {"a_slow", "b", "c", "d"} and len(_checks(report)) == 44


def test_sigterm_while_drawing_heatmaps_is_a_sigterm_and_the_reports_are_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib")
    from specgrad.reporting import heatmap

    (tmp_path / "rel.py").write_text(
        dedent(LAYERS) + "\n\ndef wrong(g, x, w):\n    return 1.5 * (g @ w.T), x.T @ g\n"
    )
    extra = "cases: [random, wide]\n"
    spec = SPEC.format(name="wrong", forward="forward", extra="").replace("rel:backward", "rel:wrong")
    (tmp_path / "wrong.yaml").write_text(
        spec.replace("method: {mode: directional}", "").replace("cases: [random]\n", extra)
    )
    real, drawn = heatmap.png, []

    def png(*args: Any, **kwargs: Any) -> bytes:
        drawn.append(1)
        if len(drawn) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(heatmap, "png", png)
    json_path, html_path = tmp_path / "r.json", tmp_path / "r.html"
    assert (
        main(["validate", str(tmp_path), "-j", "1", "--json", str(json_path), "--html", str(html_path)])
        == 143
    )
    doc = json.loads(json_path.read_text())
    assert doc["interrupted"] is True and doc["signal"] == "SIGTERM" and doc["exit_code"] == 143
    assert len(drawn) == 1 and "drawing was interrupted" in html_path.read_text()


def test_a_signal_before_the_run_starts_is_a_clean_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import specgrad.cli as cli

    _write(tmp_path, "a_good", "forward")

    def spec_paths(args: Any) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)
        raise AssertionError("SIGTERM did not stop the run")

    monkeypatch.setattr(cli, "spec_paths", spec_paths)
    assert main(["validate", str(tmp_path)]) == 143
    captured = capsys.readouterr()
    assert "interrupted" in captured.err and "Traceback" not in captured.err + captured.out


@pytest.mark.parametrize("raised", ["KeyboardInterrupt", "Weird"])
def test_a_layer_raising_a_base_exception_is_its_checks_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], raised: str
) -> None:
    """In a worker, the check in progress is its ERROR and the run goes on; in process, a
    KeyboardInterrupt is Ctrl-C's (it cannot be told apart), another BaseException is the
    spec's located error and the other specs run."""
    layer = f"\n\nclass Weird(BaseException):\n    pass\n\n\ndef odd(x, w):\n    if _moved(w):\n        raise {raised}()\n    return x @ w\n"
    (tmp_path / "rel.py").write_text(dedent(LAYERS) + layer)
    (tmp_path / "a_odd.yaml").write_text(SPEC.format(name="a_odd", forward="odd", extra=""))
    _write_good = (tmp_path / "b_good.yaml").write_text(
        SPEC.format(name="b_good", forward="forward", extra="")
    )
    del _write_good
    report = tmp_path / "r.json"
    assert main(["validate", str(tmp_path), "-j", "1", "--isolate", "--json", str(report)]) == 1
    checks = _checks(report)
    w = checks["a_odd[float64,random]::w"]
    assert w["status"] == "ERROR" and f"the worker saw the layer's code raise {raised}" in w["message"]
    assert {c["status"] for i, c in checks.items() if i.startswith("b_good")} == {"PASS"}
    if raised == "Weird":
        assert main(["validate", str(tmp_path), "-j", "1", "--json", str(report)]) == 2
        out = capsys.readouterr().out
        assert re.search(r"a_odd\.yaml: a callable raised Weird, which is not an Exception", out)
        assert {c["spec"] for c in _checks(report).values()} >= {"b_good"} and "Traceback" not in out


def test_a_spec_changed_during_the_run_is_an_error_not_a_wrong_result(tmp_path: Path) -> None:
    from specgrad.compile import compile_spec
    from specgrad.parallel import CompileOptions, Job, _expect, _work
    from specgrad.validate import parse_spec

    path = _write(tmp_path, "a_good", "forward")
    plan = compile_spec(parse_spec(path))[0]
    (tmp_path / "a_good.yaml").write_text(path.read_text().replace("float64", "float32"))

    outcome = _work(Job(str(path), CompileOptions(), _expect(plan)), _Quiet())  # type: ignore[arg-type]
    assert outcome.error and "the spec file changed while the run was going on" in outcome.error[0].message
    assert outcome.results == []


def test_npy_fixtures_of_complex_or_structured_values_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "rel.py").write_text(dedent(LAYERS))
    np.save(tmp_path / "c.npy", np.ones((2, 3), dtype=np.complex128))
    fill = "{shape: [2, 3], fill: {kind: npy, path: c.npy}}"
    (tmp_path / "s.yaml").write_text(
        SPEC.format(name="s", forward="forward", extra="").replace("{shape: [2, 3]}", fill)
    )
    assert main(["lint", str(tmp_path)]) == 2
    assert "c.npy holds complex128 values; a fixture holds real numbers" in capsys.readouterr().out


def test_a_signal_while_a_worker_starts_is_not_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers start with Ctrl-C and SIGTERM blocked, not ignored, in this process: a SIGTERM
    arriving then is delivered once the worker is started, and stops the run."""
    from multiprocessing.context import SpawnProcess

    _write(tmp_path, "a_good", "forward")
    real = SpawnProcess.start

    def start(self: SpawnProcess) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        real(self)

    monkeypatch.setattr(SpawnProcess, "start", start)
    report = tmp_path / "r.json"
    assert main(["validate", str(tmp_path), "--isolate", "-j", "1", "--json", str(report)]) == 143
    assert json.loads(report.read_text())["signal"] == "SIGTERM"


def test_a_second_signal_while_the_interrupted_spec_is_reported_keeps_the_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from specgrad.reporting.console import ConsoleReporter

    stop = "\n\ndef stop(x, w):\n    if _moved(w):\n        raise KeyboardInterrupt\n    return x @ w\n"
    (tmp_path / "rel.py").write_text(dedent(LAYERS) + stop)
    (tmp_path / "a.yaml").write_text(SPEC.format(name="a", forward="stop", extra=""))
    real = ConsoleReporter.spec_results

    def spec_results(self: ConsoleReporter, results: list[Any]) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal, while the first is handled
        real(self, results)

    monkeypatch.setattr(ConsoleReporter, "spec_results", spec_results)
    report = tmp_path / "r.json"
    assert main(["validate", str(tmp_path), "-j", "1", "--json", str(report)]) == 130  # in process: Ctrl-C
    doc = json.loads(report.read_text())
    assert doc["interrupted"] is True and {c["target"] for c in doc["checks"]} >= {
        "x",
        "contract.forward_output",
    }


def test_a_spec_edited_mid_run_keeping_its_check_ids_is_caught(tmp_path: Path) -> None:
    from specgrad.compile import compile_spec
    from specgrad.parallel import CompileOptions, Job, _digest, _expect, _work
    from specgrad.validate import parse_spec

    path = _write(tmp_path, "b_good", "forward")
    plan = compile_spec(parse_spec(path))[0]
    digest = _digest(str(path))
    path.write_text(path.read_text().replace("rel:backward", "rel:forward"))  # same ids, other code

    outcome = _work(Job(str(path), CompileOptions(), _expect(plan), digest), _Quiet())  # type: ignore[arg-type]
    assert outcome.error and "the spec file changed while the run was going on" in outcome.error[0].message


def test_a_layer_raising_generator_exit_in_a_worker_is_its_checks_error(tmp_path: Path) -> None:
    layer = "\n\ndef odd(x, w):\n    if _moved(w):\n        raise GeneratorExit\n    return x @ w\n"
    (tmp_path / "rel.py").write_text(dedent(LAYERS) + layer)
    (tmp_path / "a.yaml").write_text(SPEC.format(name="a", forward="odd", extra=""))
    report = tmp_path / "r.json"
    assert main(["validate", str(tmp_path), "--isolate", "-j", "1", "--json", str(report)]) == 1
    w = _checks(report)["a[float64,random]::w"]
    assert "saw the layer's code raise GeneratorExit" in w["message"]
    assert w["message"].endswith("the worker went on with the next case")
