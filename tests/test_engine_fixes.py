"""The engine's fixes to DSPy's own costs (bridge/engine/fixes.py): what each relies on in
DSPy's code — these fail loudly when an upgrade changes it — and that each works."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from typing import Any

import dspy_bridge.engine as engine_module
from dspy_bridge.domain.lm import LmConfig, check_lm
from dspy_bridge.domain.signatures import parse_signature
from dspy_bridge.domain.usage import ModelUsage
from dspy_bridge.engine import fixes

dspy = engine_module.dspy
ENGINE = engine_module.ENGINE
execution = fixes.execution


def test_dspy_makes_the_thread_hops_the_fix_runs_inline() -> None:
    hops = {
        execution.aexecute: ["to_thread(_cached", "to_thread(_price_result", "to_thread(_store"],
        execution._aattempt: ["to_thread(_price_legacy"],
        dspy.BaseLM.acall: ["to_thread(prepare"],
        dspy.LM.aforward: ["to_thread(prepare"],
    }
    for function, calls in hops.items():
        source = inspect.getsource(function)
        for call in calls:
            assert f"asyncio.{call}" in source, (function.__qualname__, call)
    # and nothing else in the async path hops to a thread that the fix does not know of
    assert inspect.getsource(execution).count("asyncio.to_thread(") == 4


def test_dspy_builds_a_type_adapter_per_value_where_the_fix_shares_them() -> None:
    source = inspect.getsource(fixes.adapter_utils)
    assert "TypeAdapter(type(value)).dump_python" in source
    assert "TypeAdapter(annotation).validate_python" in source


def _run(cache: bool) -> int:
    """An execute through the engine; how many calls went to a thread."""
    lm = ENGINE.build_lm(check_lm(LmConfig.model_validate(
        {"model": "mock/fixes", "num_retries": 0, "cache": cache, "extra": {"default": "x"}})))
    program = ENGINE.build_program("fixes", "fixes", parse_signature("question -> answer"),
                                   "predict", None, [], None, {}, {})
    hops: list[Any] = []
    loop = asyncio.new_event_loop()
    executor = loop.run_in_executor

    def counting(pool: Any, func: Any, *args: Any) -> Any:  # what to_thread goes through
        hops.append(func)
        return executor(pool, func, *args)

    loop.run_in_executor = counting  # type: ignore[method-assign]
    usage: dict[str, ModelUsage] = {}
    try:
        outputs = loop.run_until_complete(
            ENGINE.execute(program, lm, {"question": "q"}, {}, usage.update)
        )
    finally:
        loop.close()
    assert outputs.outputs == {"answer": "x"}
    return len(hops)


def test_an_lm_call_makes_no_thread_hop_while_the_cache_is_in_memory() -> None:
    fixes.install()
    fixes.set_disk_cache(False)
    assert _run(cache=True) == 0
    assert _run(cache=False) == 0


def test_the_cache_steps_keep_their_threads_with_the_disk_cache() -> None:
    fixes.install()
    fixes.set_disk_cache(True)
    try:
        assert _run(cache=True) >= 1  # the cache get (and its put, on a miss)
    finally:
        fixes.set_disk_cache(False)


def test_other_functions_still_run_in_threads() -> None:
    fixes.install()

    async def where() -> bool:
        import threading

        main = threading.get_ident()
        return await asyncio.to_thread(lambda: threading.get_ident() != main)

    assert asyncio.run(where())


def test_type_adapters_are_shared_per_type_and_format_the_same() -> None:
    fixes.install()
    shared = fixes.adapter_utils.TypeAdapter
    assert shared(int) is shared(int) and shared(list[str]) is shared(list[str])
    assert shared(dict[str, Any], config=None) is not shared(dict[str, Any], config=None)
    assert fixes.adapter_utils.serialize_for_json({"a": [1, 2.5]}) == {"a": [1, 2.5]}
    assert fixes.adapter_utils.parse_value("3", int) == 3


def test_dspy_logs_plain_text_through_its_own_handler_which_the_fix_routes_to_json() -> None:
    import logging

    from dspy.utils.logging_utils import configure_dspy_loggers

    logger = logging.getLogger("dspy")
    configure_dspy_loggers("dspy")  # what importing DSPy does
    assert [h.get_name() for h in logger.handlers].count(fixes.DSPY_HANDLER_NAME) == 1
    assert logger.propagate is False
    fixes.route_dspy_logs()
    assert fixes.DSPY_HANDLER_NAME not in [h.get_name() for h in logger.handlers]
    assert logger.propagate is True


def test_dspy_best_of_n_counts_failures_on_the_module_where_the_programs_count_per_call() -> (
    None
):
    from dspy_bridge.engine import programs

    def reward(inputs: Any, prediction: Any) -> float:
        return 1.0

    def failing_calls(cls: Any) -> int:
        # A DummyLM answer without the `answer` field cannot be parsed: every attempt fails.
        lm = dspy.utils.DummyLM([{"other": "x"}] * 20)
        module = cls(module=dspy.Predict("question -> answer"), N=3, reward_fn=reward,
                     threshold=1.0)
        with dspy.context(lm=lm, adapter=dspy.ChatAdapter(use_json_adapter_fallback=False)):
            with contextlib.suppress(dspy.AdapterParseError):  # the last failure is raised
                module(question="q")
        return int(module.fail_count)

    for dspy_class in (dspy.BestOfN, dspy.Refine):
        assert failing_calls(dspy_class) < 3  # DSPy's own: the module's count went down
    for bridge_class in (programs.BestOfN, programs.Refine):
        assert failing_calls(bridge_class) == 3


def test_dspy_threads_see_its_settings_not_the_callers_context_so_the_scope_rides_both() -> (
    None
):
    from dspy.utils.parallelizer import ParallelExecutor

    from dspy_bridge.engine.scope import SCOPE, SCOPE_SETTING, CallScope, current_scope

    scope = CallScope(partition="p")
    token = SCOPE.set(scope)
    try:
        with dspy.context(**{SCOPE_SETTING: scope}):
            seen = ParallelExecutor(num_threads=2, disable_progress_bar=True).execute(
                lambda item: (SCOPE.get(), current_scope()), [1, 2])
    finally:
        SCOPE.reset(token)
    assert [context for context, _ in seen] == [None, None]  # DSPy's threads: no context
    assert [found for _, found in seen] == [scope, scope]


def test_dspy_formats_a_list_observation_as_text_blobs_so_tools_answer_observations() -> None:
    from dspy.adapters.utils import format_field_value

    from dspy_bridge.engine.tools import Observation, observed

    text_field = dspy.InputField()
    text_field.annotation = str
    try:
        format_field_value(text_field, [1, 2])
    except TypeError:
        pass  # DSPy's own: a list of anything but text breaks the prompt
    else:
        raise AssertionError("DSPy formats non-text lists now: Observation may go")
    wrapped = observed([1, 2])
    assert isinstance(wrapped, Observation) and wrapped.value == [1, 2]
    assert format_field_value(text_field, wrapped) == "[1, 2]"
    assert observed("plain") == "plain" and not isinstance(observed("plain"), Observation)


def test_dspy_validates_tool_arguments_one_by_one_where_host_tools_check_them_whole() -> None:
    from dspy_bridge.domain.host import HostFunction
    from dspy_bridge.engine.tools import HostTool, host_tool

    assert "self._validate_and_parse_args(**kwargs)" in inspect.getsource(dspy.Tool.acall)

    async def run(**kwargs: Any) -> Any:
        return kwargs

    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    plain = dspy.Tool(run, name="t", args=schema["properties"])
    try:
        asyncio.run(plain.acall(n="not a number"))
    except ValueError:
        pass  # DSPy's own check: ReAct would show its traceback to the LM
    else:
        raise AssertionError("DSPy no longer validates arguments itself")
    tool = host_tool(HostFunction("t", "", schema, 0))
    assert isinstance(tool, HostTool)
    observation = asyncio.run(tool.acall(n="not a number"))
    assert observation.startswith("Execution error in t: invalid arguments at n:")
