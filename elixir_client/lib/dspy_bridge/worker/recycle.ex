defmodule DSPyBridge.Worker.Recycle do
  @moduledoc false
  # Worker recycling (the `:max_requests` and `:max_age_ms` options): a ready
  # worker counts the requests it accepts and, from when it becomes ready,
  # runs a `:max_age_ms` timer. At either limit it moves to :recycling, where
  # new requests are queued (as while :starting) and those in flight finish.
  # Once nothing is in flight the OS process is sent `shutdown` and awaited
  # (SIGKILL after `:shutdown_grace` plus `:kill_after`); then a fresh OS
  # process is started in the same Erlang process, which goes through
  # :starting and :replaying (the replay of sessions, tools and programs)
  # before it serves the queue. A recycle is not a restart: the pool's
  # `:on_start` hook (restart count, load counter) is not called, and the
  # queued callers keep their count on the pool's load counter.
  #
  # `data` is the worker's state data (DSPyBridge.Worker.Data), whose
  # `recycle` field is `%{max_requests, max_age_ms, served, stopping}`.

  require Logger

  alias DSPyBridge.Protocol
  alias DSPyBridge.Worker.{Data, Effects, HostCalls, Outbound, Replies, StartFailure}

  @doc "The `:max_age_ms` timer, as :gen_statem actions, for a worker that just became ready."
  @spec age_timer(Data.t()) :: [:gen_statem.action()]
  def age_timer(%Data{recycle: %{max_age_ms: nil}}), do: []
  def age_timer(%Data{recycle: %{max_age_ms: ms}}), do: [{{:timeout, :recycle}, ms, :max_age}]

  @doc """
  Sends the queue of a worker that just became ready (see
  `DSPyBridge.Worker.Outbound.drain_queue/1`), but no more requests than
  `:max_requests` allows, which are counted: `{data, actions}`, the actions
  moving on to :recycling if none is left.
  """
  @spec drain_queue(Data.t()) :: {Data.t(), [:gen_statem.action()]}
  def drain_queue(%Data{recycle: %{max_requests: nil}} = data),
    do: {Outbound.drain_queue(data), []}

  def drain_queue(%Data{recycle: recycle} = data) do
    room = max(recycle.max_requests - recycle.served, 0)
    cap = min(data.max_in_flight, data.requests.in_flight + room)
    drained = Outbound.drain_queue(%{data | max_in_flight: cap})
    served = recycle.served + sent(drained) - sent(data)
    data = %{drained | max_in_flight: data.max_in_flight, recycle: %{recycle | served: served}}

    if served >= recycle.max_requests,
      do: {data, [{{:timeout, :recycle}, 0, :max_requests}]},
      else: {data, []}
  end

  # requests sent, or refused at once over the worker's limits, so far
  defp sent(data), do: data.requests.in_flight + data.counters.limit_exceeded

  @doc """
  Counts a request a ready worker accepted (`result`, the :gen_statem result
  of admitting it) and moves on to :recycling when it was the last one
  `:max_requests` allows.
  """
  @spec admitted(:gen_statem.event_handler_result(atom())) ::
          :gen_statem.event_handler_result(atom())
  def admitted({:keep_state, data}), do: admitted({:keep_state, data, []})

  def admitted({:keep_state, %Data{recycle: recycle} = data, actions}) do
    served = recycle.served + 1
    data = %{data | recycle: %{recycle | served: served}}

    case recycle.max_requests do
      max when is_integer(max) and served >= max -> {:next_state, :recycling, data, actions}
      _ -> {:keep_state, data, actions}
    end
  end

  @doc "Entering :recycling: logs why, and asks the worker to stop at once if it is idle."
  @spec enter(Data.t()) :: :gen_statem.event_handler_result(atom())
  def enter(data) do
    %{served: served, max_requests: max} = data.recycle

    why =
      if is_integer(max) and served >= max,
        do: "after #{served} request(s)",
        else: "after #{data.recycle.max_age_ms} ms"

    Logger.info("dspy_bridge worker #{data.os_pid}: recycling #{why}")
    Effects.register(data, :recycling)
    check({:keep_state, data})
  end

  @doc """
  After an event handled while :recycling (`result`): once nothing is in
  flight, sends `shutdown` (once) and arms the SIGKILL deadline.
  """
  @spec check(:gen_statem.event_handler_result(atom())) ::
          :gen_statem.event_handler_result(atom())
  def check({:keep_state, data}), do: check({:keep_state, data, []})

  def check({:keep_state, %Data{recycle: %{stopping: false}} = data, actions}) do
    if data.requests.in_flight == 0 do
      data = Outbound.send_shutdown(data)
      data = %{data | recycle: %{data.recycle | stopping: true}}
      {:keep_state, data, actions ++ [{:state_timeout, data.grace + data.kill_after, :kill}]}
    else
      {:keep_state, data, actions}
    end
  end

  def check(result), do: result

  @doc "The old OS process did not exit in time: SIGKILL, then a fresh one."
  @spec kill(Data.t()) :: :gen_statem.event_handler_result(atom())
  def kill(data) do
    Logger.warning(
      "dspy_bridge worker #{data.os_pid} did not exit to be recycled; sending SIGKILL"
    )

    Effects.kill(data.os_pid)
    restart(data)
  end

  @doc "The old OS process exited (with `status`): a fresh one is started."
  @spec exited(Data.t(), integer()) :: :gen_statem.event_handler_result(atom())
  def exited(data, status) do
    Logger.debug("dspy_bridge worker #{data.os_pid} exited with status #{status} to be recycled")
    restart(data)
  end

  defp restart(data) do
    port = data.port
    # the port is closed (or closing): its exit signal is no death to act on
    Process.unlink(port)

    receive do
      {:EXIT, ^port, _} -> :ok
    after
      0 -> :ok
    end

    try do
      Port.close(port)
    rescue
      ArgumentError -> :ok
    end

    StartFailure.discard(data.start)
    data = HostCalls.kill_all(data, :worker_exited)

    case Effects.open(data.command, data.ready_timeout) do
      {:ok, port, os_pid, start} ->
        data = %{
          data
          | port: port,
            os_pid: os_pid,
            start: start,
            ready: nil,
            limits: Protocol.default_limits(),
            started_at: System.monotonic_time(:millisecond),
            recycle: %{data.recycle | served: 0, stopping: false}
        }

        data = Data.bump(data, :recycles)
        Effects.emit(data, :client, "worker_recycled", %{"os_pid" => os_pid})
        {:next_state, :starting, data, [{{:timeout, :ready}, data.ready_timeout, nil}]}

      {:error, {:spawn_failed, _python, error} = reason} ->
        Logger.error("dspy_bridge worker not restarted after recycling: #{error.message}")
        data = Replies.fail_all(%{data | exited: true}, error.message)
        {:stop, {:shutdown, reason}, data}
    end
  end
end
