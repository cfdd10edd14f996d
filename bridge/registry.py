"""Every command the worker knows: the tables of the modules that define them."""

from __future__ import annotations

from bridge import control
from bridge.commands import CommandTable

TABLES = [control.table]


def build_table(*, include_test_only: bool) -> CommandTable:
    return CommandTable.merged(TABLES, include_test_only=include_test_only)
