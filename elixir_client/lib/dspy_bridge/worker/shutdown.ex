defmodule DSPyBridge.Worker.Shutdown do
  @moduledoc false
  # How a worker process ends: its OS process gone under it (every waiting
  # caller fails at once and the process stops for its supervisor to restart
  # it), and the graceful stop of terminate/3 (ask the worker to shut down,
  # keep answering callers while it drains, SIGKILL it by OS pid if it
  # outlives the grace, then fail what is left).

  require Logger

  alias DSPyBridge.Protocol
  alias DSPyBridge.Worker.{Data, Effects, Frames, HostCalls, Outbound, Replies, StartFailure}

  @doc """
  The OS process is gone (or its port closed, `kill?` then makes sure):
  logs `why`, fails every waiting caller with `message`, emits
  `worker_exited` and stops with `{:shutdown, {:worker_exited, reason}}`.
  """
  @spec exited(Data.t(), keyword()) :: :gen_statem.event_handler_result(atom())
  def exited(data, opts) do
    pending = Data.pending(data)

    Logger.error(
      "dspy_bridge worker #{data.os_pid}#{Keyword.fetch!(opts, :why)}; " <>
        "failing #{pending} pending request(s)"
    )

    if opts[:kill?], do: Effects.kill(data.os_pid)
    data = HostCalls.kill_all(data, :worker_exited)
    data = Replies.fail_all(%{data | exited: true}, Keyword.fetch!(opts, :message))

    Effects.emit(data, :client, "worker_exited", %{
      "exit_status" => Keyword.fetch!(opts, :exit_status),
      "in_flight" => pending
    })

    {:stop, {:shutdown, {:worker_exited, Keyword.fetch!(opts, :reason)}}, data}
  end

  @doc """
  The worker could not start (`error`, see DSPyBridge.Worker.StartFailure):
  logs it, gives it to the `await_ready/2` callers, fails every waiting
  caller, emits `worker_exited` and stops with `reason`.
  """
  @spec start_failed(Data.t(), DSPyBridge.Error.t(), integer() | nil, term()) ::
          :gen_statem.event_handler_result(atom())
  def start_failed(data, error, exit_status, reason) do
    Logger.error("dspy_bridge worker #{data.os_pid} failed to start: #{error.message}")
    Enum.each(data.ready_waiters, &:gen_statem.reply(&1, {:error, error}))
    data = %{data | ready_waiters: [], exited: true}
    pending = Data.pending(data)
    data = Replies.fail_all(data, error.message)

    Effects.emit(data, :client, "worker_exited", %{
      "exit_status" => exit_status,
      "in_flight" => pending
    })

    {:stop, reason, data}
  end

  @doc "terminate/3: stops the OS process (unless it is gone) and leaves the pool's table."
  @spec terminate(term(), atom(), Data.t()) :: term()
  def terminate(_reason, _state, %Data{exited: true} = data) do
    StartFailure.discard(data.start)
    HostCalls.kill_all(data, :worker_exited)
    Effects.unregister(data)
  end

  def terminate(reason, state, data) do
    StartFailure.discard(data.start)
    # a draining worker, or one being recycled, was sent its shutdown already
    sent? = state == :draining or data.recycle.stopping
    data = if sent?, do: data, else: Outbound.send_shutdown(data)
    deadline = System.monotonic_time(:millisecond) + data.grace + data.kill_after

    data =
      case drain_until_exit(data, deadline) do
        {:exited, data} ->
          data

        {:alive, data} ->
          Logger.warning(
            "dspy_bridge worker #{data.os_pid} still running after shutdown grace; sending SIGKILL"
          )

          Effects.kill(data.os_pid)
          elem(drain_until_exit(data, System.monotonic_time(:millisecond) + 3_000), 1)
      end

    data = HostCalls.kill_all(data, :worker_exited)
    Replies.fail_all(data, "worker stopped (#{inspect(reason)})")
    Effects.unregister(data)
  end

  # Callers keep getting their answers while the worker drains, and the
  # host functions their requests need keep running.
  defp drain_until_exit(data, deadline),
    do:
      Effects.drain_until_exit(
        data.port,
        data.os_pid,
        deadline,
        data,
        &drain_frame/2,
        &drain_task/2
      )

  defp drain_frame(frame, data) do
    case Protocol.decode(frame) do
      {:response, id, response} -> data |> Replies.response(id, response) |> elem(0)
      {:event, "callback", event} -> HostCalls.callback(data, event)
      {:event, "callback_abandoned", event} -> HostCalls.abandoned(data, event)
      {:event, name, event} -> tap(data, &Frames.forward(&1, name, event))
      _ -> data
    end
  end

  defp drain_task({:DOWN, ref, :process, _, reason}, data), do: HostCalls.down(data, ref, reason)

  defp drain_task({:timeout, _, {:callback_timeout, ref}}, data),
    do: HostCalls.timed_out(data, ref)

  defp drain_task({ref, answer}, data), do: HostCalls.finished(data, ref, answer)
end
