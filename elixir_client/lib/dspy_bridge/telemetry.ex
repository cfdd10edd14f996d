defmodule DSPyBridge.Telemetry do
  @moduledoc """
  Optional `:telemetry` integration.

  `:telemetry` is not a dependency. When the host application happens to
  have it loaded, the client emits:

    * `[:dspy_bridge, :request, :stop]` — measurements `%{duration: native_time}`,
      metadata `%{command: String.t(), outcome: :ok | DSPyBridge.Error.type(),
      pool: atom() | nil, worker: non_neg_integer() | nil}`;
    * `[:dspy_bridge, :event]` — measurements `%{count: 1}`,
      metadata `%{event: DSPyBridge.Event.t()}`;
    * `[:dspy_bridge, :tool, :start]` and `[:dspy_bridge, :tool, :stop]` —
      a host function called for a worker's `callback` (a ReAct tool, a
      reward, a mock LM's generator; see `DSPyBridge.register_tools/3`):
      measurements `%{system_time: native_time}` at the start and
      `%{duration: native_time}` at the stop; metadata `%{function:
      String.t(), purpose: "tool" | "reward" | "mock", session_id:
      String.t(), callback_id: String.t(), request_id: term(), pool: atom() |
      nil, worker: non_neg_integer() | nil}`, and at the stop `outcome`:

      | outcome | |
      | --- | --- |
      | `:ok` | it returned a result, sent to the worker |
      | `:error` | it returned `{:error, reason}`, sent as an error answer |
      | `:exception` | it raised, threw or exited (an error answer) |
      | `:unencodable` | its result cannot be sent as msgpack (an error answer) |
      | `:too_large` | its result is over the worker's frame limits (an error answer) |
      | `:timeout` | it did not return within the callback's `timeout_ms`: killed, an error answer |
      | `:abandoned` | the worker stopped waiting (`callback_abandoned`; metadata `reason`): killed |
      | `:not_found` | no function of that name is registered for the session (an error answer) |
      | `:worker_exited` | the worker process ended while it ran: killed |

  Otherwise these calls do nothing.
  """

  @doc "Calls `:telemetry.execute/3` if `:telemetry` is available, else does nothing."
  @spec execute([atom()], map(), map()) :: :ok
  def execute(event, measurements, metadata) do
    if enabled?() do
      # apply/3 keeps the compiler from requiring the module.
      apply(:telemetry, :execute, [event, measurements, metadata])
    end

    :ok
  end

  @doc """
  Re-checks whether `:telemetry` is available. The answer is cached on first
  use (looking a missing module up on the code path on every call would be
  slow); call this if `:telemetry` gets loaded after the first request.
  """
  @spec refresh() :: boolean()
  def refresh do
    loaded = Code.ensure_loaded?(:telemetry) and function_exported?(:telemetry, :execute, 3)
    :persistent_term.put({__MODULE__, :enabled}, loaded)
    loaded
  end

  defp enabled? do
    case :persistent_term.get({__MODULE__, :enabled}, nil) do
      nil -> refresh()
      enabled -> enabled
    end
  end
end
