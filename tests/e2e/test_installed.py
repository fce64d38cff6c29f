"""The installed `specgrad` console script, run from a folder outside the repository: the
wheel must carry the schema and the zoo, so nothing may come from the source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SPECS


def _installed_script() -> Path:
    script = Path(sys.executable).parent / "specgrad"
    if not script.is_file():
        pytest.skip(f"no installed specgrad script next to {sys.executable} (run `pip install .`)")
    return script


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SPECGRAD_DEBUG")}


def test_installed_cli_outside_the_repo(tmp_path: Path) -> None:
    script = _installed_script()
    work = tmp_path / "elsewhere"
    work.mkdir()
    for name in ("linear.yaml", "dense_layer.yaml"):
        shutil.copy(SPECS / name, work / name)
    proc = subprocess.run(
        [str(script), "validate", "."], cwd=work, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "222 passed, 0 failed"

    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "import specgrad, specgrad.validate as v; print(specgrad.__file__); print(len(v.schema_text()))",
        ],
        cwd=work,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    package_file, schema_len = where.stdout.split()
    package = Path(package_file).resolve().parent
    if REPO not in package.parents:  # a real (non-editable) install: the wheel carries the schema
        packaged = package / "schemas" / "spec.schema.json"
        assert packaged.read_text() == (REPO / "schemas" / "spec.schema.json").read_text()
    assert int(schema_len) > 1000


def test_installed_cli_reports_bad_spec_located(tmp_path: Path) -> None:
    script = _installed_script()
    (tmp_path / "bad.yaml").write_text(
        "specgrad: 1\nname: x\ndescription: d\nforward: a:b\nbackward: a:b\ninputs:\n  x: {shape: [0]}\n"
    )
    proc = subprocess.run(
        [str(script), "lint", "bad.yaml"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "bad.yaml:7:15: inputs.x.shape[0]: expected a value >= 1, got integer 0" in proc.stdout
