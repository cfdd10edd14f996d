defmodule DSPyBridge.Worker.Recycle do
  @moduledoc false
  # Worker recycling (the `:max_requests`, `:max_age_ms` and `:max_memory_mb`
  # options): a ready worker counts the requests it accepts, runs a
  # `:max_age_ms` timer from when it becomes ready, and every
  # `:memory_check_ms` reads its OS process's resident memory (RSS, see
  # DSPyBridge.Worker.Memory). At any limit it moves to :recycling, where
  # new requests are queued (as while :starting) and those in flight finish.
  # Once nothing is in flight the OS process is sent `shutdown` and awaited
  # (SIGKILL after `:shutdown_grace` plus `:kill_after`); then a fresh OS
  # process is started in the same Erlang process, which goes through
  # :starting and :replaying (the replay of sessions, tools and programs)
  # before it serves the queue. A recycle is not a restart: the pool's
  # `:on_start` hook (restart count, load counter) is not called, and the
  # queued callers keep their count on the pool's load counter.
  #
  # The memory is checked on a timer rather than every N requests: a leak
  # grows with time as well as with traffic (caches, background threads),
  # an idle worker holding leaked memory should still be replaced, and a
  # timer bounds the cost of reading /proc whatever the request rate.
  #
  # `data` is the worker's state data (DSPyBridge.Worker.Data), whose
  # `recycle` field is `%{max_requests, max_age_ms, max_memory_mb,
  # memory_check_ms, served, stopping, reason, rss_kb}`: `reason` is the
  # limit that started the last recycle, `rss_kb` the RSS last read.

  require Logger

  alias DSPyBridge.Protocol

  alias DSPyBridge.Worker.{
    Data,
    Effects,
    HostCalls,
    Memory,
    Outbound,
    Replies,
    StartFailure
  }

  @typedoc "The limit that makes a worker recycle: the option's name."
  @type reason :: :max_requests | :max_age_ms | :max_memory_mb

  @doc """
  Drops the memory limit of a worker without a procfs to read RSS from (not
  Linux), which is logged once per node.
  """
  @spec configure(Data.t()) :: Data.t()
  def configure(%Data{recycle: %{max_memory_mb: mb} = recycle} = data) when mb != nil do
    if Memory.supported?(),
      do: data,
      else: %{data | recycle: %{recycle | max_memory_mb: unsupported(mb)}}
  end

  def configure(data), do: data

  # the warning is logged once per node, not once per worker and restart
  defp unsupported(max_memory_mb) do
    key = {__MODULE__, :memory_unsupported_logged}

    unless :persistent_term.get(key, false) do
      :persistent_term.put(key, true)

      Logger.warning(
        "dspy_bridge: max_memory_mb: #{max_memory_mb} is ignored: " <>
          "/proc/self/status cannot be read to measure a worker's memory (not Linux?)"
      )
    end

    nil
  end

  @doc """
  The recycling timers, as :gen_statem actions, for a worker that just
  became ready: `:max_age_ms`'s and the first memory check.
  """
  @spec timers(Data.t()) :: [:gen_statem.action()]
  def timers(%Data{recycle: recycle} = data) do
    age = if ms = recycle.max_age_ms, do: [{{:timeout, :recycle}, ms, :max_age_ms}], else: []
    age ++ memory_timer(data)
  end

  defp memory_timer(%Data{recycle: %{max_memory_mb: nil}}), do: []

  defp memory_timer(%Data{recycle: recycle}),
    do: [{{:timeout, :memory_check}, recycle.memory_check_ms, nil}]

  @doc "A recycling limit's timer (`{:timeout, :recycle}`) went off while ready: recycles."
  @spec limit_reached(Data.t(), reason()) :: :gen_statem.event_handler_result(atom())
  def limit_reached(data, reason),
    do: {:next_state, :recycling, %{data | recycle: %{data.recycle | reason: reason}}}

  @doc """
  The memory check's timer went off while ready: recycles if the OS
  process's RSS is over `:max_memory_mb`, else checks again later. An RSS
  that cannot be read (the process is exiting: its exit status follows) is
  no reason to recycle.
  """
  @spec check_memory(Data.t()) :: :gen_statem.event_handler_result(atom())
  def check_memory(%Data{recycle: recycle} = data) do
    case Memory.rss_kb(data.os_pid) do
      {:ok, kb} when kb > recycle.max_memory_mb * 1024 ->
        limit_reached(%{data | recycle: %{recycle | rss_kb: kb}}, :max_memory_mb)

      _ ->
        {:keep_state_and_data, memory_timer(data)}
    end
  end

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
      max when is_integer(max) and served >= max ->
        data = %{data | recycle: %{data.recycle | reason: :max_requests}}
        {:next_state, :recycling, data, actions}

      _ ->
        {:keep_state, data, actions}
    end
  end

  @doc "Entering :recycling: logs why, and asks the worker to stop at once if it is idle."
  @spec enter(Data.t()) :: :gen_statem.event_handler_result(atom())
  def enter(data) do
    Logger.info("dspy_bridge worker #{data.os_pid}: recycling #{why(data.recycle)}")
    Effects.register(data, :recycling)
    check({:keep_state, data})
  end

  defp why(%{reason: :max_requests, served: served}), do: "after #{served} request(s)"
  defp why(%{reason: :max_age_ms, max_age_ms: ms}), do: "after #{ms} ms"

  defp why(%{reason: :max_memory_mb, rss_kb: kb, max_memory_mb: mb}),
    do: "at #{div(kb, 1024)} MiB resident (max_memory_mb: #{mb})"

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

    case Effects.open(data.command, data.ready_timeout, data.pool) do
      {:ok, port, os_pid, start} ->
        recycled = %{
          "os_pid" => os_pid,
          "previous_os_pid" => data.os_pid,
          "reason" => Atom.to_string(data.recycle.reason)
        }

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
        Effects.emit(data, :client, "worker_recycled", recycled)
        {:next_state, :starting, data, [{{:timeout, :ready}, data.ready_timeout, nil}]}

      {:error, {:spawn_failed, _python, error} = reason} ->
        Logger.error("dspy_bridge worker not restarted after recycling: #{error.message}")
        data = Replies.fail_all(%{data | exited: true}, error.message)
        {:stop, {:shutdown, reason}, data}
    end
  end
end
