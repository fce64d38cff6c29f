"""Shared helpers: write spec files (and layer modules) into a temp folder, run the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings

from specgrad.cli import main

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"

pytest_plugins = ["pytester"]

# the suite is deterministic: hypothesis draws the same examples every run (HYPOTHESIS_PROFILE=explore
# draws fresh ones, to look for new failures by hand)
settings.register_profile("deterministic", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))

# the interrupt tests send Ctrl-C to this process and to CLI processes it starts: a shell that
# started the suite in the background (`pytest &`) hands it SIGINT ignored, which both inherit
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# spec files the tests run on purpose (buggy layers): never collected as this suite's items
collect_ignore = ["fixtures"]
SPECS = REPO / "specs"
SCHEMA_LINE = "# yaml-language-server: $schema=../schemas/spec.schema.json\n"


#: a layer module's spec with one input: LAYER_SPEC.format(name=..., module=...) (tests/e2e)
LAYER_SPEC = """\
specgrad: 1
name: {name}
description: d
forward: {module}:forward
backward: {module}:backward
inputs:
  x: {{shape: [3, 4]}}
dtypes: [float32, float64]
"""

#: a layer whose backward is 0.5% off (every gradient check of it fails)
BUGGY_LAYER = """
def forward(x):
    return x * x

def backward(g, x):
    return 2.01 * g * x
"""

#: a layer whose forward segfaults its process
CRASH_LAYER = """
import os, signal

def forward(x):
    os.kill(os.getpid(), signal.SIGSEGV)

def backward(g, x):
    return g
"""


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], Path]:
    """write(name, text) -> path of a dedented file in the test's temp folder."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dedent(text), encoding="utf-8")
        return path

    return _write


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run `specgrad ARGS` in-process and capture its exit code and output."""

    def _run(*args: str | Path) -> CliResult:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return _run


def run_subprocess(
    args: list[str], cwd: Path, exe: list[str] | None = None, path: list[Path] | None = None
) -> CliResult:
    """Run the CLI in a fresh interpreter from `cwd` (the source tree, then `path`, on
    PYTHONPATH)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [REPO, *(path or [])]))}
    env.pop("SPECGRAD_DEBUG", None)
    cmd = (exe or [sys.executable, "-m", "specgrad"]) + args
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session")
def zoo_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """`specgrad validate specs/` once per session, in a fresh interpreter: its JSON report,
    with the exit code and output under "_run"."""
    import json

    path = tmp_path_factory.mktemp("zoo") / "zoo.json"
    result = run_subprocess(["validate", str(SPECS), "--json", str(path)], cwd=REPO)
    doc = json.loads(path.read_text()) if path.is_file() else {"checks": []}
    doc["_run"] = result
    return doc
