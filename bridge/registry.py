"""Every command the worker knows, by the module whose `table` defines it.

The names are known without importing those modules, so the `ready` event can go out
before pydantic and the handlers load (see `bridge.startup`). Adding a command: its
handler and Args model in its module's table, and its name here; `build_table` refuses
to start when the two disagree.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bridge.commands import CommandTable

COMMANDS: dict[str, str] = {
    "ping": "bridge.control",
    "get_stats": "bridge.control",
    "cancel": "bridge.control",
    "shutdown": "bridge.control",
    "configure_lm": "bridge.programs",
    "create_program": "bridge.programs",
    "execute_program": "bridge.programs",
    "get_program": "bridge.programs",
    "list_programs": "bridge.programs",
    "delete_program": "bridge.programs",
    "list_sessions": "bridge.programs",
    "end_session": "bridge.programs",
    "export_program": "bridge.programs",
    "import_program": "bridge.programs",
    "get_usage": "bridge.programs",
    "reset_usage": "bridge.programs",
    "configure_cache": "bridge.programs",
}

# Enabled only by --enable-test-commands (this list alone decides which those are).
TEST_COMMANDS: dict[str, str] = {
    "sleep": "bridge.control",
    "echo": "bridge.control",
    "fail": "bridge.control",
    "stdout_noise": "bridge.control",
}


def command_names(*, include_test_only: bool) -> list[str]:
    return [*COMMANDS, *(TEST_COMMANDS if include_test_only else {})]


def build_table(*, include_test_only: bool) -> CommandTable:
    from bridge.commands import CommandTable

    declared = {**COMMANDS, **TEST_COMMANDS}
    modules = dict.fromkeys(declared.values())
    tables = [importlib.import_module(name).table for name in modules]
    table = CommandTable.merged(tables)
    if set(table.names()) != set(declared):
        raise RuntimeError(
            "bridge.registry disagrees with the command tables: "
            f"missing here {sorted(set(table.names()) - set(declared))}, "
            f"missing in tables {sorted(set(declared) - set(table.names()))}"
        )
    return table.restricted_to(command_names(include_test_only=include_test_only))
