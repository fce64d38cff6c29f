"""The CLI end to end on real spec files in a temp folder: the zoo, reports, exit codes,
and a table of bad inputs, each with its exit code and located message."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SPECS, dedent, run_subprocess

LAYERS = """
import numpy as np

def forward(x, w):
    return x @ w

def backward(g, x, w):
    return g @ w.T, x.T @ g
"""

GOOD = """\
specgrad: 1
name: lin
description: matmul
forward: layers:forward
backward: layers:backward
inputs:
  x: {shape: [2, 3]}
parameters:
  w: {shape: [3, 4]}
dtypes: [float64]
"""


def test_zoo_validates(zoo_report) -> None:  # type: ignore[no-untyped-def]
    result = zoo_report["_run"]
    assert result.code == 0, result.text
    last = result.out.rstrip("\n").splitlines()[-1]
    assert re.fullmatch(r"\d+ passed, 0 failed(, \d+ skipped)?", last), last
    assert int(last.split()[0]) > 500
    assert "Traceback" not in result.text


def test_zoo_lint_and_list(cli) -> None:  # type: ignore[no-untyped-def]
    lint = cli("lint", SPECS)
    assert lint.code == 0 and f"{len(list(SPECS.rglob('*.yaml')))} spec(s) ok, 0 invalid" in lint.out
    listed = cli("list", SPECS, "-k", "conv2d and float64 and random")
    assert listed.code == 0
    assert listed.out.splitlines()[:3] == [
        "conv2d[float64,random]::x",
        "conv2d[float64,random]::w",
        "conv2d[float64,random]::b",
    ]


def test_every_shipped_spec_has_the_schema_modeline() -> None:
    for path in SPECS.glob("*.yaml"):
        assert path.read_text().startswith("# yaml-language-server: $schema=../schemas/spec.schema.json\n"), (
            path
        )


def test_output_table_and_json_report(tmp_path: Path, write, cli) -> None:  # type: ignore[no-untyped-def]
    write("layers.py", LAYERS)
    spec = write("lin.yaml", GOOD)
    report = tmp_path / "out" / "report.json"
    result = cli("validate", spec, "--json", report)
    assert result.code == 0, result.text
    assert "max abs err" in result.out and "lin[" not in result.out.split("\n")[0]
    assert result.out.splitlines()[-1] == "33 passed, 0 failed"  # 3 cases x (x, w + 9 contracts)
    doc = json.loads(report.read_text())
    assert doc["summary"]["passed"] == 3 * (2 + 9) and doc["exit_code"] == 0
    ids = [c["id"] for c in doc["checks"]]
    assert "lin[float64,random]::x" in ids and "lin[float64,special]::contract.finite" in ids
    fig = next(c for c in doc["checks"] if c["id"] == "lin[float64,random]::w")["figures"]
    assert set(fig) >= {
        "max_abs_err",
        "max_rel_err",
        "worst_index",
        "analytical",
        "numerical",
        "bound",
        "noise_floor",
        "violations",
        "size",
    }
    assert [p.name for p in report.parent.iterdir()] == ["report.json"]  # no temp file left


def test_quiet_and_verbose(write, cli) -> None:  # type: ignore[no-untyped-def]
    write("layers.py", LAYERS)
    spec = write("lin.yaml", GOOD)
    quiet = cli("validate", spec, "-q")
    assert quiet.out.splitlines() == ["33 passed, 0 failed"]
    verbose = cli("validate", spec, "-v")
    assert "contract.no_mutation" in verbose.out and "noise floor" in verbose.out


def test_selection_dtype_and_seed(write, cli) -> None:  # type: ignore[no-untyped-def]
    write("layers.py", LAYERS)
    spec = write("lin.yaml", GOOD.replace("[float64]", "[float32, float64]"))
    assert cli("validate", spec, "-q", "--dtype", "float32").out.splitlines() == ["33 passed, 0 failed"]
    assert cli("validate", spec, "-q", "-k", "::w and random").out.splitlines() == ["2 passed, 0 failed"]
    assert cli("validate", spec, "-q", "--seed", "3", "--dtype", "float64,float32").code == 0


def test_one_broken_spec_never_stops_the_others(tmp_path: Path, write, cli) -> None:  # type: ignore[no-untyped-def]
    write("layers.py", LAYERS + "\ndef crash(x, w):\n    raise RuntimeError('kaboom')\n")
    write("a_broken.yaml", "specgrad: 1\nname: [\n")
    write("b_crash.yaml", GOOD.replace("name: lin", "name: crash").replace("layers:forward", "layers:crash"))
    write("c_missing.yaml", GOOD.replace("name: lin", "name: missing").replace("layers:forward", "nomod:f"))
    write("d_good.yaml", GOOD)
    report = tmp_path / "r.json"
    result = cli("validate", tmp_path, "--json", report)
    assert result.code == 2  # a spec error outranks check failures
    assert "a_broken.yaml:3:1: invalid YAML" in result.out
    assert "c_missing.yaml:4:10: forward: cannot import module 'nomod'" in result.out
    assert "forward raised RuntimeError: kaboom" in result.out
    assert "ERROR crash[float64,random]::x" in result.out
    doc = json.loads(report.read_text())
    assert doc["summary"]["passed"] == 33 and doc["summary"]["errors"] == 33
    assert len(doc["spec_errors"]) == 2
    assert result.out.splitlines()[-1] == "33 passed, 33 failed"


def test_duplicate_spec_names_are_an_error(write, cli) -> None:  # type: ignore[no-untyped-def]
    write("layers.py", LAYERS)
    a = write("a.yaml", GOOD)
    write("sub/b.yaml", GOOD)
    result = cli("validate", a.parent, "-q")
    assert result.code == 2
    assert re.search(r"sub/b\.yaml:2:7: name: spec name 'lin' is already used by .*a\.yaml:2:7", result.out)
    assert result.out.splitlines()[-1] == "33 passed, 0 failed"


def test_nothing_selected_is_exit_5(write, cli) -> None:  # type: ignore[no-untyped-def]
    write("layers.py", LAYERS)
    spec = write("s.yaml", GOOD)
    for argv in (["-k", "flaot32"], ["--dtype", "float16"]):
        result = cli("validate", spec, *argv)
        assert result.code == 5, result.text
        assert "no checks selected" in result.out and result.out.splitlines()[-1] == "0 passed, 0 failed"


def test_non_spec_yaml_in_a_folder_is_skipped_with_a_note(write, cli) -> None:  # type: ignore[no-untyped-def]
    write("layers.py", LAYERS)
    write("s.yaml", GOOD)
    env = write("environment.yml", "name: myenv\ndependencies: [numpy]\n")
    write("mkdocs.yml", "theme: !!python/name:material.Theme\n")  # another tool's tags
    write("playbook.yml", "- hosts: all\n")
    write("ci.yml", "jobs: [\n")  # not even valid YAML
    result = cli("validate", env.parent, "-q")
    assert result.code == 0, result.text
    assert "note: skipped" in result.out and "environment.yml: no top-level 'specgrad:' key" in result.out
    assert result.out.count("note: skipped") == 4
    named = cli("validate", env)  # named on the command line: it must be a spec
    assert named.code == 2 and "missing required field 'specgrad'" in named.out


def test_report_file_is_readable_like_any_file(tmp_path: Path, write, cli) -> None:  # type: ignore[no-untyped-def]
    import os

    write("layers.py", LAYERS)
    spec = write("s.yaml", GOOD)
    old = os.umask(0o022)
    try:
        cli("validate", spec, "--json", tmp_path / "r.json")
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644


def test_fail_fast(write, cli) -> None:  # type: ignore[no-untyped-def]
    write("layers.py", LAYERS.replace("x.T @ g", "2 * x.T @ g"))
    write("a.yaml", GOOD)
    write("b.yaml", GOOD.replace("name: lin", "name: lin2"))
    result = cli("validate", Path(write("a.yaml", GOOD)).parent, "--fail-fast", "-q")
    assert result.code == 1
    assert "lin2" not in result.out
    assert result.out.splitlines()[-1] == "1 passed, 1 failed"  # x passed, then w failed


def test_interrupt_reports_what_finished(tmp_path: Path, write, cli) -> None:  # type: ignore[no-untyped-def]
    """Ctrl-C inside user code, in process (-j 1: there a KeyboardInterrupt is Ctrl-C's; a
    worker ignores Ctrl-C, so there one is the check's ERROR): exit 130, finished checks
    reported, the JSON report complete."""
    write(
        "layers.py",
        # only the special case (the last) has 0.0 in x: Ctrl-C there, after random and wide
        LAYERS + "\ndef slow(x, w):\n    if (x == 0.0).any():\n        raise KeyboardInterrupt\n"
        "    return x @ w\n",
    )
    write("a.yaml", GOOD)
    write("b.yaml", GOOD.replace("name: lin", "name: slow").replace("layers:forward", "layers:slow"))
    report = tmp_path / "r.json"
    result = cli("validate", tmp_path, "-j", "1", "--json", report)
    assert result.code == 130
    assert "interrupted" in result.out and result.out.splitlines()[-1].endswith("passed, 0 failed")
    doc = json.loads(report.read_text())
    assert doc["interrupted"] is True and doc["exit_code"] == 130
    slow = [c for c in doc["checks"] if c["spec"] == "slow"]
    assert doc["summary"]["passed"] == 33 + 22 and len(slow) == 22  # 2 cases x (2 gradients + 9 contracts)


# --- bad inputs: (files, argv, exit code, located message fragment) ------------------------

SPEC_ERRORS = [
    ("yaml syntax", "specgrad: 1\nname: [x\n", 2, r"s\.yaml:3:1: invalid YAML"),
    (
        "duplicate key",
        GOOD.replace("description: matmul", "description: a\nname: again"),
        2,
        r"s\.yaml:4:1: name: duplicate key 'name' \(first defined at line 2\)",
    ),
    (
        "unknown field",
        GOOD + "inptus: {}\n",
        2,
        r"s\.yaml:11:1: inptus: unknown field 'inptus' \(did you mean 'inputs'\?\)",
    ),
    (
        "unknown tensor field",
        GOOD.replace("{shape: [2, 3]}", "{shpae: [2, 3]}"),
        2,
        r"s\.yaml:7:7: inputs\.x\.shpae: unknown field 'shpae' \(did you mean 'shape'\?\)",
    ),
    ("wrong type", GOOD.replace("[2, 3]", "2x3"), 2, r"s\.yaml:7:14: inputs\.x\.shape: expected a list"),
    (
        "negative dim",
        GOOD.replace("[2, 3]", "[2, -3]"),
        2,
        r"s\.yaml:7:18: inputs\.x\.shape\[1\]: expected a value >= 1, got integer -3",
    ),
    (
        "zero dim",
        GOOD.replace("[2, 3]", "[0, 3]"),
        2,
        r"s\.yaml:7:15: inputs\.x\.shape\[0\]: expected a value >= 1",
    ),
    (
        "too large",
        GOOD.replace("[2, 3]", "[100000, 100000]"),
        2,
        r"s\.yaml:7:14: inputs\.x\.shape: .* the limit",
    ),
    (
        "unknown dtype",
        GOOD.replace("[float64]", "[float8]"),
        2,
        r"s\.yaml:10:10: dtypes\[0\]: expected one of float16, float32, float64; got string 'float8'",
    ),
    (
        "version",
        GOOD.replace("specgrad: 1", "specgrad: 2"),
        2,
        r"s\.yaml:1:11: specgrad: unsupported spec format version 2",
    ),
    (
        "missing field",
        GOOD.replace("description: matmul\n", ""),
        2,
        r"s\.yaml:1:1: missing required field 'description'",
    ),
    (
        "bad import string",
        GOOD.replace("layers:forward", "layers.forward"),
        2,
        r"s\.yaml:4:10: forward: expected an import string 'package\.module:qualname'",
    ),
    (
        "yes is not a bool",
        GOOD.replace("{shape: [2, 3]}", "{shape: [2, 3], grad: yes}"),
        2,
        r"s\.yaml:7:28: inputs\.x\.grad: expected true or false, got string 'yes'",
    ),
    (
        "not representable",
        GOOD.replace("{shape: [2, 3]}", "{shape: [2, 3], fill: {kind: special, values: [0.5, 0.1]}}").replace(
            "[float64]", "[float16, float64]"
        ),
        2,
        r"s\.yaml:7:.*inputs\.x\.fill\.values\[1\]: 0\.1 is not exactly representable in float16",
    ),
    (
        "npy missing",
        GOOD.replace("{shape: [2, 3]}", "{shape: [2, 3], fill: {kind: npy, path: x.npy}}"),
        2,
        r"s\.yaml:7:.*inputs\.x\.fill\.path: no such file",
    ),
    (
        "int without fill",
        GOOD.replace("parameters:", "  lab: {shape: [2], dtype: int64}\nparameters:"),
        2,
        r"s\.yaml:8:3: inputs\.lab: a int64 tensor needs a fill",
    ),
    ("empty", "", 2, r"s\.yaml:1:1: empty spec file"),
    ("not a mapping", "- 1\n- 2\n", 2, r"s\.yaml:1:1: a spec is a YAML mapping, got list"),
    (
        "constant shorthand",
        GOOD.replace("{shape: [3, 4]}", "{shape: [3, 4], fill: constant}"),
        2,
        r"s\.yaml:9:.*needs the mapping form",
    ),
    (
        "empty range",
        GOOD.replace("{shape: [3, 4]}", "{shape: [3, 4], fill: {kind: uniform, low: 2, high: 1}}"),
        2,
        r"s\.yaml:9:.*parameters\.w\.fill: empty range",
    ),
    (
        "case names unknown tensor",
        GOOD + "cases: [{name: c, fills: {y: special}}]\n",
        2,
        r"s\.yaml:11:.*cases\[0\]\.fills\.y: no tensor named 'y'",
    ),
    (
        "layer params missing",
        GOOD.replace(
            "forward: layers:forward\nbackward: layers:backward\n",
            "convention: layer\nlayer: {class: layers:L}\n",
        ),
        2,
        r"s\.yaml:5:8: layer: missing layer\.params\.w",
    ),
    (
        "missing module",
        GOOD.replace("layers:forward", "nosuchmod:forward"),
        2,
        r"s\.yaml:4:10: forward: cannot import module 'nosuchmod'",
    ),
    (
        "missing attribute",
        GOOD.replace("layers:backward", "layers:backwrd"),
        2,
        r"s\.yaml:5:11: backward: 'layers' has no attribute 'backwrd' \(did you mean 'backward'\?\)",
    ),
    (
        "not callable",
        GOOD.replace("layers:forward", "layers:CONST"),
        2,
        r"s\.yaml:4:10: forward: 'layers:CONST' is a int, not a callable",
    ),
    (
        "call syntax in an import string",
        GOOD.replace("layers:forward", "'layers:forward()'"),
        2,
        r"s\.yaml:4:10: forward: expected an import string 'package\.module:qualname'",
    ),
    (
        "object-constructing tag",
        GOOD.replace("description: matmul", "description: !!python/object/apply:os.getcwd []"),
        2,
        r"s\.yaml:3:14: description: unsupported YAML tag 'tag:yaml\.org,2002:python/object/apply:os\.getcwd' on a list",
    ),
    (
        "recursive alias",
        GOOD + "attrs: &a {k: *a}\n",
        2,
        r"s\.yaml:11:.*attrs\.k.*nests too deeply \(recursive alias\?\)",
    ),
    (
        "alias bomb",
        GOOD
        + "attrs:\n  a: &a [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]\n"
        + "".join(
            f"  {c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefg", "bcdefgh", strict=True)
        ),
        2,
        r"s\.yaml:\d+:\d+: attrs\..*: the document expands to more than 100000 values",
    ),
    ("tab indentation", GOOD.replace("  x: {shape", "\tx: {shape"), 2, r"s\.yaml:7:1: invalid YAML"),
    ("zero timeout", GOOD + "timeout: 0\n", 2, r"s\.yaml:11:10: timeout: expected a value > 0"),
    ("timeout with a unit", GOOD + "timeout: 10s\n", 2, r"s\.yaml:11:10: timeout: expected a number"),
    (
        "fixture outside the project",
        GOOD.replace("{shape: [2, 3]}", "{shape: [2, 3], fill: {kind: npy, path: /etc/x.npy}}"),
        2,
        r"s\.yaml:7:.*inputs\.x\.fill\.path: /etc/x\.npy resolves to /etc/x\.npy, outside the spec's project",
    ),
    (
        "module raises on import",
        GOOD.replace("layers:forward", "broken:forward"),
        2,
        r"s\.yaml:4:10: forward: importing module 'broken' raised ZeroDivisionError",
    ),
]

BAD_LAYERS = {
    "raises": (
        "def forward(x, w):\n    raise ValueError('boom')\n",
        1,
        r"ERROR lin\[float64,random\]::x, ::w, ::contract\.forward_output(.|\n)*forward raised ValueError: boom\n\s+File \".*bad\.py\", line \d+, in forward\n\s+raise ValueError",
    ),
    "backward raises": ("def backward(g, x, w):\n    return {}['nope']\n", 1, r"backward raised KeyError"),
    "wrong count": (
        "def backward(g, x, w):\n    return (g @ w.T,)\n",
        1,
        r"FAIL lin\[float64,random\]::contract\.backward_grads\n.*\n  backward returned 1 gradient\(s\); expected 2",
    ),
    "returns None": ("def backward(g, x, w):\n    return None\n", 1, r"backward returned None"),
    "wrong shape": (
        "def backward(g, x, w):\n    return g @ w.T, (x.T @ g).T\n",
        1,
        r"FAIL lin\[float64,random\]::w, ::contract\.backward_grads\n.*\n  gradient of w has shape \(4, 3\), w has shape \(3, 4\)",
    ),
    "wrong dtype": (
        "def backward(g, x, w):\n    return (g @ w.T).astype('float32'), x.T @ g\n",
        1,
        r"gradient of x has dtype float32, x has dtype float64",
    ),
    "not an array": (
        "def backward(g, x, w):\n    return [[0.0]], x.T @ g\n",
        1,
        r"gradient of x is a list, not a numpy array",
    ),
    "nan output": (
        "def forward(x, w):\n    y = x @ w\n    y[0, 0] = float('nan')\n    return y\n",
        1,
        r"FAIL lin\[float64,random\]::contract\.finite\n.*\n  output 0 has 1 non-finite value",
    ),
    "mutates input": (
        "def forward(x, w):\n    x *= 2\n    return x @ w\n",
        1,
        r"FAIL lin\[float64,random\]::contract\.no_mutation\n.*\n  forward modified x",
    ),
    "backward mutates": (
        "def backward(g, x, w):\n    w[0, 0] = 9.0\n    return g @ w.T, x.T @ g\n",
        1,
        r"backward modified w",
    ),
    "nondeterministic": (
        "import numpy as np\ndef forward(x, w):\n    return x @ w + np.random.rand()\n",
        1,
        r"contract\.deterministic\n.*\n  two forward calls on identical inputs gave different outputs",
    ),
    "exits": ("import sys\ndef forward(x, w):\n    sys.exit(3)\n", 1, r"forward raised SystemExit: 3"),
    "output not array": (
        "def forward(x, w):\n    return 1.5\n",
        1,
        r"output 0 is a float, not a numpy array",
    ),
    "dtype the callable rejects": (
        "def forward(x, w):\n    if x.dtype == 'float64':\n        raise TypeError(f'no {x.dtype} kernel')\n    return x @ w\n",
        1,
        r"ERROR lin\[float64,random\]::x, ::w, ::contract\.forward_output(.|\n)*forward raised TypeError: no float64 kernel",
    ),
    "gradient of another namespace": (
        "class Duck:\n    shape, dtype = (2, 3), 'float64'\ndef backward(g, x, w):\n    return Duck(), x.T @ g\n",
        1,
        r"FAIL lin\[float64,random\]::x, ::contract\.backward_grads\n.*\n  gradient of x is a Duck, not a numpy array",
    ),
    "infinite gradient": (
        "def backward(g, x, w):\n    gx = g @ w.T\n    gx[0, 0] = float('inf')\n    return gx, x.T @ g\n",
        1,
        r"worst x\[0, 0\]: analytical inf(.|\n)*FAIL lin\[float64,random\]::contract\.finite(.|\n)*gradient of x has 1 non-finite value",
    ),
    "nondeterministic backward": (
        "import numpy as np\ndef backward(g, x, w):\n    return g @ w.T + np.random.rand() * 1e-3, x.T @ g\n",
        1,
        r"FAIL lin\[float64,random\]::contract\.backward_deterministic",
    ),
    "upcasts": (
        "def forward(x, w):\n    return (x @ w).astype('float32')\n",
        1,
        r"output 0 has dtype float32, expected float64 \(the check's dtype\)",
    ),
}


@pytest.mark.parametrize("name, text, code, pattern", SPEC_ERRORS, ids=[c[0] for c in SPEC_ERRORS])
def test_bad_spec(write, cli, name: str, text: str, code: int, pattern: str) -> None:  # type: ignore[no-untyped-def]
    write("layers.py", LAYERS + "\nCONST = 3\n")
    write("broken.py", "1 / 0\n")
    spec = write("s.yaml", text)
    result = cli("validate", spec)
    assert result.code == code, result.text
    assert re.search(pattern, result.text), result.text
    assert "Traceback" not in result.text


@pytest.mark.parametrize("name", sorted(BAD_LAYERS))
def test_bad_callable(write, cli, name: str) -> None:  # type: ignore[no-untyped-def]
    source, code, pattern = BAD_LAYERS[name]
    write("bad.py", LAYERS + "\n" + source)
    spec = write("s.yaml", GOOD.replace("layers:", "bad:"))
    result = cli("validate", spec)
    assert result.code == code, result.text
    assert re.search(pattern, result.text), result.text
    assert "Traceback" not in result.text


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["validate", "does/not/exist"], r"does/not/exist: no such file or folder"),
        (["validate", "{dir}", "--dtype", "float8"], r"--dtype 'float8': expected one of"),
        (["validate", "{dir}", "-k", "a and"], r"-k 'a and': expression ends too early"),
        (["validate", "{dir}", "--seed", "x"], r"argument --seed: expected an integer, got 'x'"),
        (["validate", "{dir}", "--seed", "-1"], r"argument --seed: -1 is outside 0 to 2\*\*32-1"),
        (["validate", "{dir}", "--json", "{dir}"], r"--json .*: is a folder, expected a file path"),
        (["validate", "--json", "{dir}/s.yaml", "{dir}"], r"refusing to write the report over a spec file"),
        (["validate", "{dir}", "--json", "{dir}/s.yaml/r.json"], r"--json .*: cannot create its folder"),
        (["validate", "{dir}", "--mode", "quick"], r"argument --mode: invalid choice: 'quick'"),
        (
            ["validate", "{dir}", "--fast", "--mode", "per-element"],
            r"--fast and --mode per-element contradict",
        ),
        (["validate", "{dir}", "--max-memory", "12Q"], r"--max-memory: expected a size such as 512M"),
        (["validate", "{dir}", "-j", "0"], r"argument -j/--jobs"),
        (["validate", "{dir}", "--timeout", "0"], r"argument --timeout: expected seconds > 0 and <= 604800"),
        (
            ["validate", "{dir}", "--timeout", "1m"],
            r"argument --timeout: expected seconds \(a number\), got '1m'",
        ),
        (["frobnicate"], r"invalid choice"),
        (["validate", "{empty}"], r"no spec files"),
    ],
)
def test_bad_command_line(tmp_path: Path, write, cli, argv: list[str], pattern: str) -> None:  # type: ignore[no-untyped-def]
    write("layers.py", LAYERS)
    write("s.yaml", GOOD)
    (tmp_path / "empty").mkdir()
    args = [a.format(dir=tmp_path, empty=tmp_path / "empty") for a in argv]
    result = cli(*args)
    assert result.code == 2
    assert re.search(pattern, result.text), result.text


def test_lint_imports_no_user_code(write, cli) -> None:  # type: ignore[no-untyped-def]
    write("layers.py", "raise SystemExit('imported!')\n")
    spec = write("s.yaml", GOOD)
    result = cli("lint", spec)
    assert result.code == 0 and "1 spec(s) ok, 0 invalid" in result.out
    assert cli("list", spec).code == 0


def test_lint_reports_all_invalid_files(write, cli) -> None:  # type: ignore[no-untyped-def]
    a = write("a.yaml", GOOD.replace("[2, 3]", "[-1, 3]"))
    write("b.yaml", GOOD + "bogus: 1\n")
    result = cli("lint", a.parent)
    assert result.code == 2
    assert "a.yaml:7:15" in result.out and "b.yaml:11:1" in result.out
    assert "0 spec(s) ok, 2 invalid" in result.out


# --- subprocess: the real entry point ------------------------------------------------------


def _into_head(args: str) -> subprocess.CompletedProcess[str]:
    """`specgrad ARGS | head -1` under pipefail, the source tree on PYTHONPATH."""
    cmd = f"'{sys.executable}' -m specgrad {args} | head -1"
    env = {**os.environ, "PYTHONPATH": str(SPECS.parent)}
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, env=env, timeout=300
    )


def test_list_into_a_closed_pipe(tmp_path: Path) -> None:
    """More ids than a pipe buffer holds, read by `head -1`: specgrad stops quietly."""

    for k in range(8):
        for spec in SPECS.glob("*.yaml"):
            text = spec.read_text().replace("\nname: ", f"\nname: copy{k}_", 1)
            (tmp_path / f"{k}_{spec.name}").write_text(text)
    proc = _into_head(f"list '{tmp_path}'")
    assert proc.stdout.strip() == "copy0_attention[float32,random]::q"
    assert proc.returncode == 141, proc.stderr
    assert proc.stderr == ""


def test_validate_into_a_closed_pipe_still_writes_its_report(tmp_path: Path) -> None:
    """`validate ... | head -1`: the rest of the output goes nowhere, the run finishes, the
    JSON report is complete and the exit code is the verdict's."""

    report = tmp_path / "r.json"
    zoo = " ".join(f"'{p}'" for p in sorted(SPECS.glob("*.yaml")))  # the numpy zoo: output enough
    proc = _into_head(f"validate {zoo} --json '{report}'")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    doc = json.loads(report.read_text())
    assert doc["summary"]["passed"] > 500 and doc["exit_code"] == 0


def test_module_entry_point_in_a_fresh_interpreter(tmp_path: Path) -> None:
    shutil.copy(SPECS / "linear.yaml", tmp_path / "linear.yaml")
    (tmp_path / "bad.yaml").write_text(dedent(GOOD.replace("[2, 3]", "[2, -3]")))
    result = run_subprocess(["validate", "linear.yaml", "bad.yaml"], cwd=tmp_path)
    assert result.code == 2
    assert "bad.yaml:7:18: inputs.x.shape[1]: expected a value >= 1" in result.out
    assert result.out.splitlines()[-1] == "150 passed, 0 failed"
    assert "\x1b[" not in result.out  # no escape codes when piped


def test_modes_report_how_gradients_were_checked(tmp_path: Path, write, cli) -> None:  # type: ignore[no-untyped-def]
    """default: colored where a structure applies; per-element: one element at a time;
    fast (and its alias --fast): projections, with the note that it is not per element."""
    write("layers.py", LAYERS)
    write("s.yaml", GOOD.replace("[2, 3]", "[16, 40]").replace("[3, 4]", "[40, 24]"))
    methods = {}
    for flags in ([], ["--mode", "per-element"], ["--mode", "fast"], ["--fast"]):
        report = tmp_path / "r.json"
        result = cli("validate", tmp_path, "--json", report, "-j", "1", *flags)
        assert result.code == 0, result.text
        doc = json.loads(report.read_text())
        methods[" ".join(flags)] = {
            c["target"]: c["method"] for c in doc["checks"] if c["kind"] == "gradient"
        }
        if "fast" in " ".join(flags):
            assert "not element by element" in result.out and any("fast mode" in n for n in doc["notes"])
            assert not any(c["target"] == "contract.taylor" for c in doc["checks"])
    assert methods[""]["x"].startswith("colored: 40 groups, structure detected: axis 0->0")
    assert methods["--mode per-element"] == {"x": "elementwise", "w": "elementwise"}
    assert methods["--mode fast"] == methods["--fast"] == {"x": "directional", "w": "directional"}


@pytest.mark.e2e
def test_overflow_is_a_finding_not_a_warning_on_stderr(tmp_path: Path) -> None:
    (tmp_path / "expl.py").write_text(
        "import numpy as np\n"
        "def forward(x, y):\n    return np.exp(x * y)\n"
        "def backward(g, x, y):\n    e = np.exp(x * y)\n    return g * e * y, g * e * x\n"
    )
    (tmp_path / "s.yaml").write_text(
        "specgrad: 1\nname: expl\ndescription: overflows in the wide case\n"
        "forward: expl:forward\nbackward: expl:backward\n"
        "inputs:\n  x: {shape: [40, 40], fill: {kind: normal, std: 4}}\n"
        "  y: {shape: [40, 40], fill: {kind: normal, std: 4}}\n"
        "dtypes: [float64]\n"
    )
    result = run_subprocess(["validate", ".", "-q", "-j", "1"], tmp_path)
    assert result.code == 1 and "contract.finite" in result.out
    assert "Warning" not in result.err and "Traceback" not in result.text, result.err
