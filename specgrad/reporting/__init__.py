"""Stage 5: reporters turn a RunSummary into text or files. Only reporters present results."""

from __future__ import annotations

from specgrad.reporting.atomic import write_atomic
from specgrad.reporting.console import ConsoleReporter
from specgrad.reporting.json_report import JsonReporter

__all__ = ["ConsoleReporter", "JsonReporter", "write_atomic"]
