defmodule DSPyBridge.Worker.Replayer do
  @moduledoc false
  # Drives the pure DSPyBridge.Worker.Replay in the worker process while it
  # is :replaying: builds it from the init commands and the pool's `:replay`
  # function, sends its batches (DSPyBridge.Worker.Outbound), takes their
  # answers, and moves on to :ready, emitting `replayed`, once it is done.
  # The replay begins as the OS process sends `ready`, so the worker's
  # `:start` telemetry is emitted here too, and its `:replay` at the end.

  require Logger

  alias DSPyBridge.Worker.{Data, Effects, Outbound, Replay, Spans}

  @doc """
  The replay of `data`'s init commands and `:replay` batches, started now
  (the OS process has just sent `ready`).
  """
  @spec start(Data.t()) :: Data.t()
  def start(data) do
    Spans.worker_start(data)
    batches = if data.replay_fun, do: data.replay_fun.(), else: []
    replay = Replay.new(data.init_commands, batches, System.monotonic_time(:millisecond))
    %{data | replay: replay}
  end

  @doc "Sends the next batch, waits for answers, or moves to `:ready` when all is replayed."
  @spec step(Data.t()) :: :gen_statem.event_handler_result(atom())
  def step(data) do
    case Replay.next(data.replay) do
      :wait ->
        {:keep_state, data}

      :done ->
        summary = Replay.summary(data.replay, System.monotonic_time(:millisecond))

        if summary["commands"] > 0 do
          Logger.info(
            "dspy_bridge worker #{data.os_pid}: replayed #{summary["commands"]} command(s) in #{summary["duration_ms"]} ms" <>
              if(summary["failed"] > 0, do: " (#{summary["failed"]} failed)", else: "")
          )

          Effects.emit(data, :client, "replayed", summary)
          Spans.worker_replay(data, summary)
        end

        {:next_state, :ready, %{data | replay: nil}}

      {:send, batch, replay} ->
        batch
        |> Enum.reduce(%{data | replay: replay}, &send_one/2)
        |> step()
    end
  end

  defp send_one({command, args}, data) do
    case Outbound.send_command(data, command, args, :replay) do
      {:ok, id, data} ->
        %{data | replay: Replay.sent(data.replay, id, command)}

      {:error, data} ->
        Logger.warning("dspy_bridge worker #{data.os_pid}: could not replay #{command}")
        %{data | replay: Replay.not_sent(data.replay)}
    end
  end

  @doc """
  The response to replay command `id` (already out of the request table):
  `{data, :replay_answered}`, or `{data, :ok}` if the replay is over.
  """
  @spec answered(Data.t(), term(), map()) :: {Data.t(), :replay_answered | :ok}
  def answered(data, id, response) do
    if Replay.pending?(data.replay, id) do
      {result, replay} = Replay.answered(data.replay, id, response)

      with {:failed, command, error} <- result do
        Logger.warning(
          "dspy_bridge worker #{data.os_pid}: replaying #{command} failed: " <>
            inspect(error, limit: 10)
        )
      end

      {%{data | replay: replay}, :replay_answered}
    else
      {data, :ok}
    end
  end
end
