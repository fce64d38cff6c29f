"""One self-contained HTML file: the summary, every check's figures, and for each failing
gradient check heatmaps of where it is wrong (PNG, embedded as data: URIs, so the file can
be mailed or attached to a CI run). No scripts, no external resources."""

from __future__ import annotations

import base64
import html
import platform
from itertools import groupby
from pathlib import Path

import numpy as np

from specgrad import __version__
from specgrad.process import pending_signal
from specgrad.reporting import heatmap
from specgrad.reporting.console import failure_text
from specgrad.results import CheckResult, RunSummary, Status

#: pictures drawn per report (the first failing checks'); the rest keep their figures
MAX_PICTURES = 60

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em; color: #1d1d1f; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; } h3 { font-size: 1em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: 12.5px; }
th, td { border-bottom: 1px solid #ddd; padding: 2px 8px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f5f5f7; padding: .6em; white-space: pre-wrap; font-size: 12px; }
.PASS { color: #1a7f37; } .FAIL { color: #cf222e; font-weight: bold; }
.ERROR, .TIMEOUT { color: #8250df; font-weight: bold; } .SKIP { color: #9a6700; }
.warning { background: #fff8c5; padding: .5em; border: 1px solid #d4a72c; }
.failure { border-left: 4px solid #cf222e; padding-left: 1em; margin: 1.5em 0; }
img.heatmap { max-width: 100%; border: 1px solid #ddd; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


class HtmlReporter:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.interrupted = False  # Ctrl-C while drawing: the report holds the pictures drawn

    def pictures(self, summary: RunSummary) -> int:
        """How many heatmaps the report will draw (about half a second each)."""
        if heatmap.unavailable():
            return 0
        bad = [r for r in summary.results if r.status in _BAD and r.evidence is not None]
        return min(len(bad), MAX_PICTURES)

    def render(self, summary: RunSummary) -> str:
        self.anchors = {r.check_id: f"check-{i}" for i, r in enumerate(summary.results)}
        parts = [
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">',
            "<title>specgrad report</title>",
            f"<style>{_CSS}</style>\n</head>\n<body>",
            "<h1>specgrad report</h1>",
            self._summary(summary),
            self._errors(summary),
            self._failures(summary.results),
            self._all_checks(summary.results),
            "</body>\n</html>\n",
        ]
        return "\n".join(p for p in parts if p)

    def write(self, summary: RunSummary) -> None:
        from specgrad.reporting.atomic import write_atomic

        write_atomic(self.path, self.render(summary))

    def _summary(self, s: RunSummary) -> str:
        counts = (
            f"{s.count(Status.PASS)} passed, {s.count(Status.FAIL)} failed, {s.count(Status.ERROR)} errors, "
            f"{s.count(Status.TIMEOUT)} timed out, "
            f"{s.count(Status.SKIP)} skipped, {len(s.spec_errors)} spec errors"
        )
        env = f"specgrad {__version__}, Python {platform.python_version()}, numpy {np.__version__}"
        devices = "".join(f"<li>{_e(d)}: {_e(what)}</li>" for d, what in s.devices.items())
        out = [
            f'<p id="summary"><b>{_e(counts)}</b>; exit code {s.exit_code}'
            f"{' (interrupted: the checks that finished)' if s.interrupted else ''}</p>",
            f"<p>{_e(env)}</p>",
        ]
        if devices:
            out.append(f"<p>Devices:</p><ul>{devices}</ul>")
        why = heatmap.unavailable()
        if why and any(r.evidence is not None for r in s.results):
            out.append(f'<p class="warning">{_e(why)}.</p>')
        if s.notes:
            out.append("<ul>" + "".join(f"<li>{_e(n)}</li>" for n in s.notes) + "</ul>")
        return "\n".join(out)

    def _errors(self, s: RunSummary) -> str:
        issues = [*s.spec_errors, *s.internal_errors]
        if not issues:
            return ""
        items = "".join(f"<li><code>{_e(i)}</code></li>" for i in issues)
        return f'<h2 id="spec-errors">Spec errors</h2>\n<ul>{items}</ul>'

    def _failures(self, results: list[CheckResult]) -> str:
        bad = [r for r in results if r.status.bad]
        if not bad:
            return ""
        out = ['<h2 id="failures">Failures</h2>']
        drawn = 0
        for r in bad:
            out.append(f'<section class="failure" id="{self.anchors[r.check_id]}">')
            out.append(f'<h3><span class="{r.status}">{r.status}</span> <code>{_e(r.check_id)}</code></h3>')
            out.append(f"<pre>{_e(failure_text([r]))}</pre>")
            if r.evidence is not None and not heatmap.unavailable():
                self.interrupted = self.interrupted or bool(pending_signal())
                if self.interrupted:
                    out.append("<p>(no picture: drawing was interrupted)</p>")
                elif drawn < MAX_PICTURES:
                    out.append(self._picture(r))
                    drawn += 1
                else:
                    out.append(f"<p>(no picture: only the first {MAX_PICTURES} failures are drawn)</p>")
            elif r.kind == "gradient" and r.comparison is not None and r.evidence is None:
                out.append("<p>(no per-element figures for this check: directional or too large)</p>")
            out.append("</section>")
        return "\n".join(out)

    def _picture(self, r: CheckResult) -> str:
        """The check's heatmaps as an <img>, or why there is none: a picture that cannot be
        drawn never costs the report (and Ctrl-C stops the drawing, not the writing)."""
        assert r.evidence is not None
        try:
            data = base64.b64encode(heatmap.png(r.evidence, r.check_id)).decode("ascii")
        except KeyboardInterrupt:
            self.interrupted = True
            return "<p>(no picture: drawing was interrupted)</p>"
        except Exception as exc:  # noqa: BLE001 - matplotlib's own failure, reported in the page
            return f"<p>(no picture: drawing it failed: {_e(type(exc).__name__)}: {_e(exc)})</p>"
        return f'<img class="heatmap" alt="heatmaps of {_e(r.check_id)}" src="data:image/png;base64,{data}">'

    def _all_checks(self, results: list[CheckResult]) -> str:
        if not results:
            return ""
        out = ['<h2 id="checks">All checks</h2>']
        head = (
            "<tr><th>check</th><th>status</th><th>device</th><th>max abs err</th><th>max rel err</th>"
            "<th>noise floor</th><th>err/bound</th><th>bound at worst</th><th>method</th>"
            "<th>numerical in</th><th>seconds</th></tr>"
        )
        for file, group in groupby(results, key=lambda r: r.file):
            out.append(f"<h3>{_e(file)}</h3>\n<table>\n{head}")
            for r in group:
                c = r.comparison
                check = (
                    f'<a href="#{self.anchors[r.check_id]}">{_e(r.check_id)}</a>'
                    if r.status in _BAD
                    else _e(r.check_id)
                )
                out.append(
                    f'<tr><td><code>{check}</code></td><td class="{r.status}">{r.status}</td>'
                    f"<td>{_e(r.device)}</td>"
                    f'<td class="num">{_fmt(c.max_abs_err if c else None)}</td>'
                    f'<td class="num">{_fmt(c.max_rel_err if c else None)}</td>'
                    f'<td class="num">{_fmt(c.noise_floor if c else None)}</td>'
                    f'<td class="num">{_fmt(c.worst_ratio if c else None)}</td>'
                    f'<td class="num">{_fmt(c.bound if c else None)}</td>'
                    f"<td>{_e(r.method or '-')}</td><td>{_e(r.numerical_dtype or '-')}</td>"
                    f'<td class="num">{r.duration:.3f}</td></tr>'
                )
            out.append("</table>")
        return "\n".join(out)


_BAD = tuple(s for s in Status if s.bad)
