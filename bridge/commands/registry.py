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
    from dspy_bridge.commands.table import CommandTable

COMMANDS: dict[str, str] = {
    "ping": "dspy_bridge.commands.control",
    "get_stats": "dspy_bridge.commands.control",
    "cancel": "dspy_bridge.commands.control",
    "shutdown": "dspy_bridge.commands.control",
    "callback_reply": "dspy_bridge.commands.control",
    "configure_lm": "dspy_bridge.commands.lm",
    "create_program": "dspy_bridge.commands.programs",
    "execute_program": "dspy_bridge.commands.execute",
    "execute_batch": "dspy_bridge.commands.batch",
    "evaluate_program": "dspy_bridge.commands.evaluate",
    "compile_program": "dspy_bridge.commands.compile",
    "get_program": "dspy_bridge.commands.programs",
    "list_programs": "dspy_bridge.commands.programs",
    "delete_program": "dspy_bridge.commands.programs",
    "list_sessions": "dspy_bridge.commands.sessions",
    "end_session": "dspy_bridge.commands.sessions",
    "export_program": "dspy_bridge.commands.programs",
    "import_program": "dspy_bridge.commands.programs",
    "get_usage": "dspy_bridge.commands.sessions",
    "reset_usage": "dspy_bridge.commands.sessions",
    "get_history": "dspy_bridge.commands.sessions",
    "configure_cache": "dspy_bridge.commands.lm",
    "register_signature": "dspy_bridge.commands.signatures",
    "get_signature": "dspy_bridge.commands.signatures",
    "list_signatures": "dspy_bridge.commands.signatures",
    "delete_signature": "dspy_bridge.commands.signatures",
    "register_tools": "dspy_bridge.commands.tools",
    "list_tools": "dspy_bridge.commands.tools",
    "delete_tool": "dspy_bridge.commands.tools",
}

# Enabled only by --enable-test-commands (this list alone decides which those are).
TEST_COMMANDS: dict[str, str] = {
    "sleep": "dspy_bridge.commands.testing",
    "echo": "dspy_bridge.commands.testing",
    "fail": "dspy_bridge.commands.testing",
    "stdout_noise": "dspy_bridge.commands.testing",
}


def command_names(*, include_test_only: bool) -> list[str]:
    return [*COMMANDS, *(TEST_COMMANDS if include_test_only else {})]


def build_table(*, include_test_only: bool) -> CommandTable:
    from dspy_bridge.commands.table import CommandTable

    declared = {**COMMANDS, **TEST_COMMANDS}
    modules = dict.fromkeys(declared.values())
    tables = [importlib.import_module(name).table for name in modules]
    table = CommandTable.merged(tables)
    if set(table.names()) != set(declared):
        raise RuntimeError(
            "dspy_bridge.commands.registry disagrees with the command tables: "
            f"missing here {sorted(set(table.names()) - set(declared))}, "
            f"missing in tables {sorted(set(declared) - set(table.names()))}"
        )
    return table.restricted_to(command_names(include_test_only=include_test_only))
