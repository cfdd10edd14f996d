defmodule DSPyBridge.Telemetry do
  @moduledoc """
  Optional `:telemetry` integration.

  `:telemetry` is not a dependency. When the host application happens to
  have it loaded, the client emits:

    * `[:dspy_bridge, :request, :stop]` — measurements `%{duration: native_time}`,
      metadata `%{command: String.t(), outcome: :ok | DSPyBridge.Error.type(),
      pool: atom() | nil, worker: non_neg_integer() | nil}`;
    * `[:dspy_bridge, :event]` — measurements `%{count: 1}`,
      metadata `%{event: DSPyBridge.Event.t()}`.

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
