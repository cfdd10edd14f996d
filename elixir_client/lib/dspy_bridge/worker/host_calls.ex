defmodule DSPyBridge.Worker.HostCalls do
  @moduledoc false
  # The worker's `callback` events (protocol: "Host functions and
  # callbacks"), driven in the worker process without ever waiting on a host
  # function: each callback's function is looked up in the pool (its
  # `:host_function` hook) and run in a task under the pool's
  # Task.Supervisor (its `:tasks`), with the callback's `timeout_ms` as its
  # deadline. The task's answer (encoded in the task, see
  # DSPyBridge.HostFunction.answer/4) goes back as a `callback_reply`. The
  # deadline, the worker's `callback_abandoned`, or the worker process's end
  # kill the task; so does the worker process dying any other way (each
  # task has a guard that watches it). Every call emits
  # `[:dspy_bridge, :tool, :start]` and `[:dspy_bridge, :tool, :stop]`.
  #
  # Every function takes and returns the worker's DSPyBridge.Worker.Data.

  require Logger

  alias DSPyBridge.{HostFunction, Telemetry}
  alias DSPyBridge.Worker.{Callbacks, Data, Effects, Outbound}

  @default_timeout_ms 60_000

  @doc "A `callback` event: its function started in a task, or answered with an error at once."
  @spec callback(Data.t(), map()) :: Data.t()
  def callback(data, event) do
    data = Data.bump(data, :callbacks)

    case parse(event) do
      {:ok, cb} ->
        start(data, cb)

      {:malformed, nil, what} ->
        Data.unexpected(data, what)

      {:malformed, callback_id, what} ->
        # the worker waits for an answer to it: give one
        data = Data.unexpected(data, what)
        reply_error(data, callback_id, "malformed callback: #{what}", "host_error", false)
    end
  end

  defp parse(%{"callback_id" => id} = event) when is_binary(id) do
    case event["function"] do
      function when is_binary(function) ->
        {:ok,
         %{
           id: id,
           function: function,
           purpose: string_or_nil(event["purpose"]),
           session_id: string_or_nil(event["session_id"]),
           request_id: event["request_id"],
           args: Map.get(event, "args", %{}),
           timeout_ms:
             case event["timeout_ms"] do
               ms when is_integer(ms) and ms > 0 -> ms
               _ -> @default_timeout_ms
             end
         }}

      other ->
        {:malformed, id, "a callback event naming no function (#{inspect(other, limit: 5)})"}
    end
  end

  defp parse(event),
    do: {:malformed, nil, "a callback event without a callback_id: #{inspect(event, limit: 20)}"}

  defp string_or_nil(s) when is_binary(s), do: s
  defp string_or_nil(_), do: nil

  defp start(data, cb) do
    Logger.debug(
      "dspy_bridge worker #{data.os_pid}: callback #{cb.id} #{cb.function} (#{cb.purpose}) " <>
        "for request #{inspect(cb.request_id)}, #{cb.timeout_ms} ms"
    )

    started = System.monotonic_time()

    Telemetry.execute(
      [:dspy_bridge, :tool, :start],
      %{system_time: System.system_time()},
      meta(data, cb)
    )

    case lookup(data, cb) do
      {:ok, run, tasks} ->
        spawn_task(data, cb, run, tasks, started)

      {:error, message} ->
        Logger.warning("dspy_bridge worker #{data.os_pid}: callback #{cb.id}: #{message}")
        data = reply_error(data, cb.id, message, "host_error", false)
        stop_telemetry(data, Map.put(cb, :started, started), :not_found)
        data
    end
  end

  defp lookup(%Data{pool: nil}, cb),
    do:
      {:error,
       "no host function #{inspect(cb.function)}: this worker is not part of a DSPyBridge.Pool, " <>
         "which keeps the host functions"}

  defp lookup(%Data{pool: pool}, cb) do
    with %{host_function: find, tasks: tasks} <- pool,
         {:ok, run} <- find.(cb.session_id, cb.function) do
      {:ok, run, tasks}
    else
      _ ->
        {:error,
         "no host function #{inspect(cb.function)} is registered with DSPyBridge.register_tools/3 " <>
           "for session #{inspect(cb.session_id)}"}
    end
  end

  defp spawn_task(data, cb, run, tasks, started) do
    worker = self()

    ctx =
      Map.take(cb, [:function, :purpose, :session_id, :request_id, :timeout_ms])
      |> Map.put(:callback_id, cb.id)

    task =
      Task.Supervisor.async_nolink(tasks, fn ->
        guard(worker)
        HostFunction.answer(cb.id, run, cb.args, ctx)
      end)

    timer = :erlang.start_timer(cb.timeout_ms, worker, {:callback_timeout, task.ref})

    entry =
      cb
      |> Map.drop([:args])
      |> Map.merge(%{ref: task.ref, pid: task.pid, timer: timer, started: started})

    %{data | callbacks: Callbacks.put(data.callbacks, entry)}
  catch
    :exit, reason ->
      # the pool's task supervisor is gone (the pool is stopping)
      message =
        "host function #{inspect(cb.function)} not started: #{Exception.format_exit(reason)}"

      data = reply_error(data, cb.id, message, "host_error", true)
      stop_telemetry(data, Map.put(cb, :started, started), :exception)
      data
  end

  # Kills the task (which runs in the pool's task supervisor, not linked to
  # this process) if this process dies before the task is done.
  defp guard(worker) do
    task = self()

    spawn(fn ->
      worker_ref = Process.monitor(worker)
      task_ref = Process.monitor(task)

      receive do
        {:DOWN, ^worker_ref, _, _, _} -> Process.exit(task, :kill)
        {:DOWN, ^task_ref, _, _, _} -> :ok
      end
    end)
  end

  @doc "A task's answer, `{outcome, encoded_reply_args}`: sent as the callback's `callback_reply`."
  @spec finished(Data.t(), reference(), term()) :: Data.t()
  def finished(data, ref, {outcome, {bin, _shape} = encoded}) when is_binary(bin) do
    case Callbacks.pop_ref(data.callbacks, ref) do
      {nil, _} ->
        # its deadline or abandonment came first
        data

      {entry, callbacks} ->
        Process.demonitor(ref, [:flush])
        Effects.cancel_timer(entry.timer)
        data = %{data | callbacks: callbacks}

        {data, outcome} =
          case Outbound.send_encoded(data, "callback_reply", encoded, :callback_reply) do
            {:ok, _id, data} ->
              {data, outcome}

            {:error, error, data} ->
              message =
                "host function #{inspect(entry.function)}: its answer is too large: #{error.message}"

              Logger.warning(
                "dspy_bridge worker #{data.os_pid}: callback #{entry.id}: #{message}"
              )

              {reply_error(data, entry.id, message, "limit_exceeded", false), :too_large}
          end

        stop_telemetry(data, entry, outcome)
        data
    end
  end

  def finished(data, _ref, _other), do: data

  @doc "A task's `:DOWN`: one that ended without answering gets an error answer."
  @spec down(Data.t(), reference(), term()) :: Data.t()
  def down(data, ref, reason) do
    case Callbacks.pop_ref(data.callbacks, ref) do
      {nil, _} ->
        data

      {entry, callbacks} ->
        Effects.cancel_timer(entry.timer)
        data = %{data | callbacks: callbacks}

        message =
          "host function #{inspect(entry.function)} exited: #{Exception.format_exit(reason)}"

        data = reply_error(data, entry.id, message, "exit", false)
        stop_telemetry(data, entry, :exception)
        data
    end
  end

  @doc "A task's deadline (the callback's `timeout_ms`) ran out: it is killed and an error answered."
  @spec timed_out(Data.t(), reference()) :: Data.t()
  def timed_out(data, ref) do
    case Callbacks.pop_ref(data.callbacks, ref) do
      {nil, _} ->
        data

      {entry, callbacks} ->
        kill(entry)
        data = %{data | callbacks: callbacks}

        message =
          "host function #{inspect(entry.function)} did not answer within #{entry.timeout_ms} ms"

        # the worker has most likely stopped waiting too (`callback_timeout`),
        # in which case this answer is ignored
        data = reply_error(data, entry.id, message, "timeout", true)
        stop_telemetry(data, entry, :timeout)
        data
    end
  end

  @doc "A `callback_abandoned` event: the worker no longer waits, so the task is killed."
  @spec abandoned(Data.t(), map()) :: Data.t()
  def abandoned(data, event) do
    case Callbacks.pop_id(data.callbacks, event["callback_id"]) do
      {nil, _} ->
        Logger.debug(
          "dspy_bridge worker #{data.os_pid}: callback #{inspect(event["callback_id"])} " <>
            "abandoned (#{inspect(event["reason"])}) after it was answered"
        )

        data

      {entry, callbacks} ->
        kill(entry)

        Logger.debug(
          "dspy_bridge worker #{data.os_pid}: callback #{entry.id} #{entry.function} abandoned " <>
            "(#{inspect(event["reason"])}); its task is killed"
        )

        data = %{data | callbacks: callbacks}
        stop_telemetry(data, entry, :abandoned, %{reason: event["reason"]})
        data
    end
  end

  @doc "Kills every outstanding task (the worker process is ending); `outcome` for telemetry."
  @spec kill_all(Data.t(), atom()) :: Data.t()
  def kill_all(data, outcome) do
    {entries, callbacks} = Callbacks.take_all(data.callbacks)

    for entry <- entries do
      kill(entry)
      stop_telemetry(data, entry, outcome)
    end

    %{data | callbacks: callbacks}
  end

  defp kill(entry) do
    Process.exit(entry.pid, :kill)
    Process.demonitor(entry.ref, [:flush])
    Effects.cancel_timer(entry.timer)
  end

  defp reply_error(data, callback_id, message, type, retryable) do
    encoded = HostFunction.error_reply(callback_id, message, type, retryable)

    case Outbound.send_encoded(data, "callback_reply", encoded, :callback_reply) do
      {:ok, _id, data} -> data
      {:error, _error, data} -> data
    end
  end

  defp meta(data, cb) do
    %{
      function: cb.function,
      purpose: cb.purpose,
      session_id: cb.session_id,
      callback_id: cb.id,
      request_id: cb.request_id,
      pool: data.pool && data.pool[:name],
      worker: data.pool && data.pool[:index]
    }
  end

  defp stop_telemetry(data, entry, outcome, extra \\ %{}) do
    Telemetry.execute(
      [:dspy_bridge, :tool, :stop],
      %{duration: System.monotonic_time() - entry.started},
      data |> meta(entry) |> Map.put(:outcome, outcome) |> Map.merge(extra)
    )
  end
end
