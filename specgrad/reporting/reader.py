"""Reports read back into a RunSummary: what `specgrad merge` joins.

A JSON report gives back every field it holds (the figures, tolerances, samples); a
JUnit report what JUnit carries: each check's id (its spec, dtype, case, device and
target follow from the id's grammar), status, message, file:line and time, and the
invalid specs' located errors. Per-element evidence is never in a report, so a merged
HTML report has no heatmaps. A file that is not one of specgrad's reports is a
ReportError naming the file and what was wrong, never a traceback.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from specgrad.compile import CHECK_ID
from specgrad.errors import Location, SpecIssue, UsageError
from specgrad.numerics.compare import Comparison
from specgrad.numerics.tolerance import Tolerance
from specgrad.reporting.json_report import FORMAT_VERSION
from specgrad.results import CheckResult, RunSummary, Shard, Status

#: file:line:col: field: message, one line of an invalid spec's error text
_ISSUE = re.compile(
    r"(?P<file>.+?):(?P<line>\d+)(?::(?P<column>\d+))?: (?:(?P<field>[^\s:]+): )?(?P<message>.*)"
)


class ReportError(UsageError):
    """A report that cannot be read or joined (exit code 2)."""


def read_report(path: Path) -> RunSummary:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: cannot read the report: {exc}") from None
    start = text.lstrip()[:1]
    try:
        if start == "{":
            return _from_json(json.loads(text))
        if start == "<":
            return _from_junit(ET.fromstring(text))
    except (ValueError, ET.ParseError) as exc:
        raise ReportError(f"{path}: not a readable report: {exc}") from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise ReportError(f"{path}: not a specgrad report (missing or malformed {exc})") from None
    raise ReportError(f"{path}: not a report: expected specgrad's JSON (--json) or JUnit XML (--junit-xml)")


# -- JSON -----------------------------------------------------------------------------------


def _from_json(doc: dict[str, Any]) -> RunSummary:
    if not isinstance(doc, dict) or "checks" not in doc or "format" not in doc:
        raise ValueError("a JSON document without specgrad's 'format' and 'checks'")
    if doc["format"] != FORMAT_VERSION:
        raise ValueError(f"report format {doc['format']!r}, this specgrad reads format {FORMAT_VERSION}")
    summary = RunSummary(
        results=[_check(c) for c in doc["checks"]],
        positions={c["id"]: int(c["position"]) for c in doc["checks"] if "position" in c},
        spec_errors=[
            SpecIssue(Location(Path(e["file"]), int(e["line"]), int(e["column"])), e["field"], e["message"])
            for e in doc["spec_errors"]
        ],
        internal_errors=[
            SpecIssue(Location(Path(e["file"])), "", e["message"]) for e in doc["internal_errors"]
        ],
        notes=list(doc["notes"]),
        frameworks=dict(doc["frameworks"]),
        devices=dict(doc["environment"]["devices"]),
        interrupted=bool(doc["interrupted"]),
        signal=15 if doc.get("signal") == "SIGTERM" else 2,
    )
    if "shard" in doc:
        s = doc["shard"]
        summary.shard = Shard(
            int(s["index"]),
            int(s["count"]),
            int(s["checks"]),
            str(s["selection"]),
            bool(s.get("complete", True)),
        )
    summary.specs_checked = len({r.spec for r in summary.results})
    return summary


def _check(c: dict[str, Any]) -> CheckResult:
    figures = c.get("figures")
    comparison = None
    if figures is not None:
        f = {k: _number(v) for k, v in figures.items() if k != "margin"}
        f["worst_index"] = tuple(f["worst_index"])
        f["violating"] = tuple(f.get("violating", ()))
        comparison = Comparison(**f)
    tolerance = Tolerance(**c["tolerance"]) if c.get("tolerance") else None
    sample = c.get("sample")
    return CheckResult(
        check_id=c["id"],
        spec=c["spec"],
        file=c["file"],
        dtype=c["dtype"],
        case=c["case"],
        target=c["target"],
        status=Status(c["status"]),
        message=c["message"],
        comparison=comparison,
        tolerance=tolerance,
        numerical_dtype=c.get("numerical_dtype", ""),
        note=c.get("note", ""),
        kinks=int(c.get("kinks", 0)),
        seed=int(c["seed"]),
        method=c.get("method", ""),
        sample=tuple(sample["flat_indices"]) if sample else None,
        duration=float(c["duration_s"]),
        device=c["device"],
        line=int(c["line"]),
        line_file=c.get("line_file", ""),
    )


def _number(value: Any) -> Any:
    """JSON holds non-finite figures as strings ("inf", "nan")."""
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    return value


# -- JUnit ----------------------------------------------------------------------------------


def _from_junit(root: ET.Element) -> RunSummary:
    if root.tag != "testsuites":
        raise ValueError(f"an XML document whose root is <{root.tag}>, not JUnit's <testsuites>")
    summary = RunSummary()
    for suite in root.iter("testsuite"):
        properties = {p.get("name"): p.get("value", "") for p in suite.iter("property")}
        if properties.get("specgrad.shard") and summary.shard is None:
            index, count = (int(x) for x in properties["specgrad.shard"].split("/"))
            checks, complete = (
                int(properties["specgrad.checks"]),
                properties.get("specgrad.complete") != "false",
            )
            summary.shard = Shard(index, count, checks, properties["specgrad.selection"], complete)
        if properties.get("specgrad.interrupted"):
            summary.interrupted = True
            summary.signal = 15 if properties["specgrad.interrupted"] == "SIGTERM" else 2
        for case in suite.iter("testcase"):
            if case.get("classname") == "specgrad.spec":
                summary.spec_errors += _issues(case)
            elif case.get("classname") == "specgrad.internal":
                summary.internal_errors += _issues(case)
            else:
                summary.results.append(_testcase(case))
                found = case.find("properties/property[@name='specgrad.position']")
                if found is not None:
                    summary.positions[case.attrib["name"]] = int(found.get("value", "0"))
    summary.specs_checked = len({r.spec for r in summary.results})
    return summary


def _testcase(case: ET.Element) -> CheckResult:
    check_id = case.attrib["name"]
    parts = CHECK_ID.match(check_id)
    if parts is None:
        raise ValueError(f"testcase {check_id!r}: not a specgrad check id (NAME[DTYPE,CASE]::TARGET)")
    out = case.find("system-out")
    status, message = Status.PASS, (out.text or "") if out is not None else ""
    for tag in ("failure", "error", "skipped"):
        element = case.find(tag)
        if element is None:
            continue
        if tag == "skipped":
            status, message = Status.SKIP, element.get("message", "")
        else:
            status = Status(element.get("type", "FAIL" if tag == "failure" else "ERROR"))
            lines = (element.text or "").splitlines()[2:]  # after the id and the where line
            message = "\n".join(line.removeprefix("  ") for line in lines) or element.get("message", "")
    return CheckResult(
        check_id=check_id,
        spec=case.get("classname") or parts["name"],
        file=case.get("file", ""),
        dtype=parts["dtype"],
        case=parts["case"],
        target=parts["target"],
        status=status,
        message=message,
        duration=float(case.get("time", "0") or 0),
        device=parts["device"] or "cpu",
        line=int(case.get("line", "0") or 0),
    )


def _issues(case: ET.Element) -> list[SpecIssue]:
    element = case.find("error")
    text = (element.text if element is not None else "") or ""
    out = []
    for line in text.splitlines():
        m = _ISSUE.fullmatch(line)
        if m is None:  # no line: "FILE: message"
            file = case.get("file", "")
            out.append(SpecIssue(Location(Path(file)), "", line.removeprefix(f"{file}: ")))
            continue
        where = Location(Path(m["file"]), int(m["line"]), int(m["column"] or 0))
        out.append(SpecIssue(where, m["field"] or "", m["message"]))
    return out
