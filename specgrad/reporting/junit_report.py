"""JUnit XML, the format CI dashboards read: a testsuite per spec, a testcase per check
(its id as the name), FAIL as <failure> and ERROR as <error> with the console's located
report as the text, SKIP as <skipped>; an invalid spec is a testcase with an <error> of
its own, so a dashboard shows it instead of a missing suite."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from itertools import groupby
from pathlib import Path

from specgrad.errors import SpecIssue
from specgrad.reporting.console import failure_text
from specgrad.results import CheckResult, RunSummary, Status

#: characters XML 1.0 cannot carry at all (terminal escapes in a user's exception text)
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _x(text: str) -> str:
    return _NOT_XML.sub("?", text)


def _first_line(text: str) -> str:
    return _x(text.strip().splitlines()[0] if text.strip() else "")


class JunitReporter:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def render(self, summary: RunSummary) -> str:
        root = ET.Element("testsuites", name="specgrad")
        for spec, group in groupby(summary.results, key=lambda r: r.spec):
            self._suite(root, spec, list(group), summary.positions)
        if summary.spec_errors:
            self._invalid(root, summary.spec_errors, "invalid specs", "specgrad.spec")
        if summary.internal_errors:
            self._invalid(root, summary.internal_errors, "internal errors", "specgrad.internal")
        facts = _run_facts(summary)
        if facts:  # what `specgrad merge` reads back, on every suite
            if not len(root):
                _count(ET.SubElement(root, "testsuite", name="specgrad (no checks)"), [])
            for suite in root:
                properties = ET.Element("properties")
                for name, value in facts.items():
                    ET.SubElement(properties, "property", name=name, value=value)
                suite.insert(0, properties)
        for key in ("tests", "failures", "errors", "skipped"):
            root.set(key, str(sum(int(s.get(key, "0")) for s in root)))
        root.set("time", f"{sum(float(s.get('time', '0')) for s in root):.3f}")
        ET.indent(root)
        return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"

    def write(self, summary: RunSummary) -> None:
        from specgrad.reporting.atomic import write_atomic

        write_atomic(self.path, self.render(summary))

    def _suite(
        self, root: ET.Element, spec: str, results: list[CheckResult], positions: dict[str, int]
    ) -> None:
        suite = ET.SubElement(root, "testsuite", name=_x(spec), file=_x(results[0].file))
        for r in results:
            case = ET.SubElement(
                suite,
                "testcase",
                name=_x(r.check_id),
                classname=_x(spec),
                file=_x(r.line_file or r.file),
                line=str(r.line),
                time=f"{r.duration:.6f}",
            )
            if r.check_id in positions:  # its place in a sharded selection: merge restores the order
                properties = ET.SubElement(case, "properties")
                ET.SubElement(
                    properties, "property", name="specgrad.position", value=str(positions[r.check_id])
                )
            if r.status is Status.SKIP:
                ET.SubElement(case, "skipped", message=_first_line(r.message or r.note))
            elif r.message and not r.status.bad:  # a pass with something to say (kinks)
                ET.SubElement(case, "system-out").text = _x(r.message)
            elif r.status.bad:
                tag = "failure" if r.status is Status.FAIL else "error"
                element = ET.SubElement(case, tag, message=_first_line(r.message), type=str(r.status))
                element.text = _x(failure_text([r]))
        _count(suite, results)

    def _invalid(self, root: ET.Element, issues: list[SpecIssue], name: str, classname: str) -> None:
        suite = ET.SubElement(root, "testsuite", name=name)
        for file, group in groupby(issues, key=lambda i: i.location.file):
            found = list(group)
            case = ET.SubElement(
                suite, "testcase", name=_x(str(file)), classname=classname, file=_x(str(file)), time="0"
            )
            case.set("line", str(found[0].location.line))
            element = ET.SubElement(case, "error", message=_x(str(found[0])), type="SpecError")
            element.text = _x("\n".join(map(str, found)))
        suite.set("tests", str(len(suite)))
        suite.set("errors", str(len(suite)))
        suite.set("failures", "0")
        suite.set("skipped", "0")
        suite.set("time", "0")


def _run_facts(summary: RunSummary) -> dict[str, str]:
    """What JUnit has no place for but a merged report needs: the shard, an interrupt."""
    facts = {}
    if summary.shard is not None:
        s = summary.shard
        facts["specgrad.shard"] = str(s)
        facts["specgrad.checks"] = str(s.checks)
        facts["specgrad.selection"] = s.selection
        facts["specgrad.complete"] = "true" if s.complete else "false"
    if summary.interrupted:
        facts["specgrad.interrupted"] = "SIGTERM" if summary.signal == 15 else "SIGINT"
    return facts


def _count(suite: ET.Element, results: list[CheckResult]) -> None:
    suite.set("tests", str(len(results)))
    suite.set("failures", str(sum(r.status is Status.FAIL for r in results)))
    suite.set("errors", str(sum(r.status in (Status.ERROR, Status.TIMEOUT) for r in results)))
    suite.set("skipped", str(sum(r.status is Status.SKIP for r in results)))
    suite.set("time", f"{sum(r.duration for r in results):.3f}")
