"""Zero false alarms: the correct zoo in float16, float32 and float64, in every default case
(random, wide, special: kinks and ties included), for several seeds, at default settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import SPECS


@pytest.fixture(scope="module")
def every_dtype(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("zoo")
    for path in SPECS.glob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        doc["dtypes"] = ["float16", "float32", "float64"]
        assert "cases" not in doc  # the zoo runs the default cases
        (folder / path.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_false_alarm_in_any_dtype(every_dtype: Path, cli, seed: int) -> None:  # type: ignore[no-untyped-def]
    report = every_dtype / f"r{seed}.json"
    result = cli("validate", every_dtype, "--seed", str(seed), "--json", report, "-q")
    doc = json.loads(report.read_text())
    bad = [(c["id"], c["message"][:300]) for c in doc["checks"] if c["status"] in ("FAIL", "ERROR")]
    assert result.code == 0 and not bad, bad
    # the special values do reach kinks and ties, and they are counted
    assert any(c.get("kinks") for c in doc["checks"] if c["spec"] == "maxpool2d")
    assert any(c.get("kinks") for c in doc["checks"] if c["spec"] == "relu" and c["dtype"] == "float16")
    skipped = {c["spec"] for c in doc["checks"] if c["status"] == "SKIP"}
    assert skipped <= {"relu", "leaky_relu", "maxpool2d"}  # the Taylor test, at kinks only
