defmodule :telemetry do
  @moduledoc false
  # A stand-in for the optional :telemetry library (a Hex package, so not
  # available here), present only in the test build: it forwards events to
  # the process registered as :dspy_bridge_telemetry_listener, if any.

  def execute(event, measurements, metadata) do
    case Process.whereis(:dspy_bridge_telemetry_listener) do
      nil -> :ok
      pid -> send(pid, {:telemetry, event, measurements, metadata})
    end

    :ok
  end
end
