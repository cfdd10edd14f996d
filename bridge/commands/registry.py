"""Every command the worker knows, by the module whose `table` defines it.

The names are known without importing those modules, so the `ready` event can go out
before pydantic and the handlers load (see `bridge.startup`), and a module is imported
only when one of its commands is first asked for (`LoadingTable`), so the first request
after start-up waits for the control commands alone. Adding a command: its handler and
Args model in its module's table, and its name here; loading refuses a module whose table
disagrees.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dspy_bridge.commands.table import CommandSpec

COMMANDS: dict[str, str] = {
    "ping": "dspy_bridge.commands.control",
    "get_stats": "dspy_bridge.commands.control",
    "cancel": "dspy_bridge.commands.control",
    "shutdown": "dspy_bridge.commands.control",
    "callback_reply": "dspy_bridge.commands.callback_reply",
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


class LoadingTable:
    """The worker's commands by name, each module imported the first time one of its
    commands is asked for, or all by `load_all` (the engine loader calls it in its thread,
    in the background). Safe from both: a module is imported once (the import lock), and
    what a load adds is the same whoever adds it."""

    def __init__(self, *, include_test_only: bool) -> None:
        declared = {**COMMANDS, **TEST_COMMANDS}
        self._module_of = {name: declared[name]
                           for name in command_names(include_test_only=include_test_only)}
        self._specs: dict[str, CommandSpec[Any]] = {}

    def get(self, name: str) -> CommandSpec[Any] | None:
        spec = self._specs.get(name)
        if spec is None and name in self._module_of:
            self._load(self._module_of[name])
            spec = self._specs[name]
        return spec

    def names(self) -> list[str]:
        return list(self._module_of)

    def load_all(self) -> None:
        for module in dict.fromkeys(self._module_of.values()):
            self._load(module)

    def _load(self, module: str) -> None:
        table = importlib.import_module(module).table
        declared = {name for name, owner in {**COMMANDS, **TEST_COMMANDS}.items()
                    if owner == module}
        if set(table.names()) != declared:
            raise RuntimeError(
                f"dspy_bridge.commands.registry disagrees with {module}'s table: "
                f"missing here {sorted(set(table.names()) - declared)}, "
                f"missing in the table {sorted(declared - set(table.names()))}"
            )
        for name in table.names():
            if name in self._module_of:
                spec = table.get(name)
                assert spec is not None
                self._specs[name] = spec
