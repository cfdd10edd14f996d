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
    from bridge.commands.table import CommandTable

COMMANDS: dict[str, str] = {
    "ping": "bridge.commands.control",
    "get_stats": "bridge.commands.control",
    "cancel": "bridge.commands.control",
    "shutdown": "bridge.commands.control",
    "configure_lm": "bridge.commands.lm",
    "create_program": "bridge.commands.programs",
    "execute_program": "bridge.commands.execute",
    "get_program": "bridge.commands.programs",
    "list_programs": "bridge.commands.programs",
    "delete_program": "bridge.commands.programs",
    "list_sessions": "bridge.commands.sessions",
    "end_session": "bridge.commands.sessions",
    "export_program": "bridge.commands.programs",
    "import_program": "bridge.commands.programs",
    "get_usage": "bridge.commands.sessions",
    "reset_usage": "bridge.commands.sessions",
    "configure_cache": "bridge.commands.lm",
}

# Enabled only by --enable-test-commands (this list alone decides which those are).
TEST_COMMANDS: dict[str, str] = {
    "sleep": "bridge.commands.testing",
    "echo": "bridge.commands.testing",
    "fail": "bridge.commands.testing",
    "stdout_noise": "bridge.commands.testing",
}


def command_names(*, include_test_only: bool) -> list[str]:
    return [*COMMANDS, *(TEST_COMMANDS if include_test_only else {})]


def build_table(*, include_test_only: bool) -> CommandTable:
    from bridge.commands.table import CommandTable

    declared = {**COMMANDS, **TEST_COMMANDS}
    modules = dict.fromkeys(declared.values())
    tables = [importlib.import_module(name).table for name in modules]
    table = CommandTable.merged(tables)
    if set(table.names()) != set(declared):
        raise RuntimeError(
            "bridge.commands.registry disagrees with the command tables: "
            f"missing here {sorted(set(table.names()) - set(declared))}, "
            f"missing in tables {sorted(set(declared) - set(table.names()))}"
        )
    return table.restricted_to(command_names(include_test_only=include_test_only))
