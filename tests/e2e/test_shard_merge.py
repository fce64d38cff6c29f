"""--shard K/N and `specgrad merge` on real spec files: N shards cover every check of the
selection exactly once, with the figures of one run, and their reports merge into that
run's report and exit code; an incomplete set of reports is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from specgrad.cli import main
from tests.conftest import BUGGY_LAYER as BUGGY
from tests.conftest import LAYER_SPEC, SPECS, run_subprocess


def _checks(report: Path) -> dict[str, dict[str, Any]]:
    doc = json.loads(report.read_text())
    return {
        c["id"]: {k: v for k, v in c.items() if k not in ("duration_s", "position")} for c in doc["checks"]
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The folder run whole (-j 1) and as 3 shards (-j 2), each with JSON and JUnit reports."""
    tmp = tmp_path_factory.mktemp("shards")
    folder = tmp / "specs"
    folder.mkdir()
    for name in ("linear", "tanh", "softmax", "maxpool2d"):
        shutil.copy(SPECS / f"{name}.yaml", folder)
    (folder / "buggy.py").write_text(BUGGY)
    (folder / "buggy.yaml").write_text(LAYER_SPEC.format(name="buggy", module="buggy"))
    whole = tmp / "whole.json"
    codes = {"whole": main(["validate", str(folder), "-q", "-j", "1", "--json", str(whole)])}
    for k in (1, 2, 3):
        json_report, xml_report = tmp / f"s{k}.json", tmp / f"s{k}.xml"
        args = ["validate", str(folder), "-q", "--shard", f"{k}/3", "-j", "2"]
        codes[k] = main([*args, "--json", str(json_report), "--junit-xml", str(xml_report)])
    return {"tmp": tmp, "folder": folder, "whole": whole, "codes": codes}


def test_shards_cover_every_check_once_with_the_figures_of_one_run(runs: dict[str, Any]) -> None:
    tmp, whole = runs["tmp"], _checks(runs["whole"])
    parts = [_checks(tmp / f"s{k}.json") for k in (1, 2, 3)]
    assert all(parts) and sum(len(p) for p in parts) == len(whole) > 100
    joined = {i: c for p in parts for i, c in p.items()}
    assert joined == whole
    # the buggy spec fails in the shard that has it, as in the whole run
    assert runs["codes"]["whole"] == 1 and sorted(runs["codes"][k] for k in (1, 2, 3)) in (
        [0, 0, 1],
        [0, 1, 1],
    )
    shard = json.loads((tmp / "s2.json").read_text())["shard"]
    assert shard["index"] == 2 and shard["count"] == 3 and shard["checks"] == len(whole)


@pytest.mark.parametrize("hash_seed", ["0", "12345"])
def test_the_partition_is_the_same_in_another_process(
    runs: dict[str, Any], hash_seed: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a CI matrix relies on: a fresh interpreter (another job, its own string hashing)
    computes the same shard and the same digest of the partition."""
    monkeypatch.setenv("PYTHONHASHSEED", hash_seed)
    again = runs["tmp"] / f"again-{hash_seed}.json"
    result = run_subprocess(
        ["validate", str(runs["folder"]), "-q", "--shard", "2/3", "-j", "1", "--json", str(again)],
        runs["tmp"],
    )
    assert result.code in (0, 1), result.text
    assert _checks(again) == _checks(runs["tmp"] / "s2.json")
    shard = lambda path: json.loads(path.read_text())["shard"]
    assert shard(again) == shard(runs["tmp"] / "s2.json")


def test_shards_of_another_partition_or_missing_checks_are_refused(
    runs: dict[str, Any], tmp_path: Path
) -> None:
    """--max-elements changes the estimates, not the check ids: such a shard would cover other
    checks than its siblings, and merge must say so; so must it for a report with a check cut."""
    other = tmp_path / "other.json"
    args = [
        "validate",
        str(runs["folder"]),
        "-q",
        "--shard",
        "1/3",
        "--max-elements",
        "3",
        "--json",
        str(other),
    ]
    assert main(args) in (0, 1)
    tmp = runs["tmp"]
    result = run_subprocess(["merge", str(other), str(tmp / "s2.json"), str(tmp / "s3.json")], tmp)
    assert result.code == 2 and "of another selection" in result.err, result.text
    doc = json.loads((tmp / "s1.json").read_text())
    doc["checks"] = doc["checks"][1:]
    cut = tmp_path / "cut.json"
    cut.write_text(json.dumps(doc))
    result = run_subprocess(["merge", str(cut), str(tmp / "s2.json"), str(tmp / "s3.json")], tmp)
    assert result.code == 2 and "the shards hold" in result.err, result.text


@pytest.mark.parametrize("kind", ["json", "xml", "mixed"])
def test_merged_reports_are_the_one_run_s_report_and_exit_code(runs: dict[str, Any], kind: str) -> None:
    tmp = runs["tmp"]
    inputs = [
        tmp / f"s{k}.{'xml' if kind == 'xml' or (kind == 'mixed' and k == 2) else 'json'}" for k in (3, 1, 2)
    ]
    merged, merged_xml = tmp / f"merged-{kind}.json", tmp / f"merged-{kind}.xml"
    code = main(["merge", *map(str, inputs), "-q", "--json", str(merged), "--junit-xml", str(merged_xml)])
    assert code == runs["codes"]["whole"] == 1
    whole, got = _checks(runs["whole"]), _checks(merged)
    assert got.keys() == whole.keys()
    if kind == "json":
        assert got == whole
    assert list(got) == list(whole)  # the one run's order: each check's place in the selection
    for check_id, c in got.items():
        assert (c["status"], c["message"], c["line"]) == (
            whole[check_id]["status"],
            whole[check_id]["message"],
            whole[check_id]["line"],
        )
    doc = json.loads(merged.read_text())
    assert doc["exit_code"] == 1 and "shard" not in doc and doc["summary"]["failed"] > 0
    assert "<testsuites" in merged_xml.read_text()


def test_an_incomplete_set_of_shards_is_refused_and_nothing_is_written(runs: dict[str, Any]) -> None:
    tmp = runs["tmp"]
    out = tmp / "never.json"
    result = run_subprocess(["merge", str(tmp / "s1.json"), str(tmp / "s3.xml"), "--json", str(out)], tmp)
    assert result.code == 2 and "shard 2/3 missing" in result.err and "Traceback" not in result.text
    assert not out.exists()
    result = run_subprocess(["merge", str(tmp / "s1.json"), str(tmp / "s1.xml"), str(tmp / "s2.json")], tmp)
    assert result.code == 2 and "shard 1/3 is given twice" in result.err
    result = run_subprocess(["merge", str(tmp / "s1.json"), "--json", str(tmp / "s1.json")], tmp)
    assert result.code == 2 and "is one of the reports being merged" in result.err
    (tmp / "junk.json").write_text("{}")
    result = run_subprocess(["merge", str(tmp / "junk.json")], tmp)
    assert result.code == 2 and "junk.json" in result.err and "Traceback" not in result.text


@pytest.mark.parametrize("value", ["0/3", "4/3", "3", "a/b", "1/0", "-1/2"])
def test_a_bad_shard_is_a_usage_error(runs: dict[str, Any], value: str) -> None:
    result = run_subprocess(["validate", str(runs["folder"]), f"--shard={value}"], runs["tmp"])
    assert result.code == 2 and "--shard" in result.err and "Traceback" not in result.text


def test_more_shards_than_plans_leaves_some_empty_and_they_still_merge(tmp_path: Path) -> None:
    shutil.copy(SPECS / "tanh.yaml", tmp_path)
    reports = []
    for k in range(1, 6):
        reports.append(tmp_path / f"s{k}.json")
        args = ["validate", str(tmp_path / "tanh.yaml"), "-q", "--dtype", "float64", "-k", "random"]
        code = main([*args, "--shard", f"{k}/5", "--json", str(reports[-1])])
        assert code == 0  # an empty shard is not "nothing selected": the selection had checks
    filled = sum(1 for r in reports if json.loads(r.read_text())["checks"])
    assert 0 < filled < 5  # two plans (tanh and tanh.second_order) among five shards
    assert main(["merge", *map(str, reports), "-q"]) == 0
