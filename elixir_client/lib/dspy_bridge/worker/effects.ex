defmodule DSPyBridge.Worker.Effects do
  @moduledoc false
  # The side effects of DSPyBridge.Worker, in one place: the port and the OS
  # process, the callers' replies and the pool's load counter, the pool's
  # callbacks, events and telemetry. `data` is the worker's state data
  # (DSPyBridge.Worker.Data), `req` a DSPyBridge.Worker.Request.

  require Logger

  alias DSPyBridge.{Error, Event, Telemetry}
  alias DSPyBridge.Worker.{StartFailure, Stderr}

  @doc """
  Opens the worker's port, its stderr read by a DSPyBridge.Worker.Stderr
  (which logs it and keeps its first lines for a start failure; `labels`: the
  pool's name and the worker's index, or nil): `{:ok, port, os_pid, start}` or
  `{:error, {:spawn_failed, python, error}}` when the interpreter cannot be
  executed.
  """
  def open(cmd, ready_timeout, labels) do
    case executable(cmd.python) do
      :ok ->
        {exe, args, stderr} = Stderr.spawn_spec(cmd, labels)

        port_opts =
          [:binary, {:packet, 4}, :exit_status, :use_stdio, args: args, env: cmd.env] ++
            if(cmd.cd, do: [cd: cmd.cd], else: [])

        try do
          Port.open({:spawn_executable, exe}, port_opts)
        rescue
          e ->
            Stderr.abandon(stderr)
            spawn_failed(cmd, Exception.message(e))
        else
          port ->
            {:os_pid, os_pid} = Port.info(port, :os_pid)
            Stderr.attach(stderr, os_pid)
            {:ok, port, os_pid, %{cmd: cmd, stderr: stderr, ready_timeout: ready_timeout}}
        end

      {:error, why} ->
        spawn_failed(cmd, why)
    end
  end

  defp spawn_failed(cmd, why),
    do: {:error, {:spawn_failed, cmd.python, StartFailure.not_executable(cmd, why)}}

  defp executable(path) do
    case File.stat(path) do
      {:ok, %File.Stat{type: :directory}} ->
        {:error, "it is a directory"}

      {:ok, %File.Stat{}} ->
        if System.find_executable(path), do: :ok, else: {:error, "not executable"}

      {:error, :enoent} ->
        {:error, "no such file"}

      {:error, reason} ->
        {:error, :file.format_error(reason) |> to_string()}
    end
  end

  @doc "Writes a frame; a closed port (the process just died) is not an error here."
  def send_frame(port, frame) do
    Port.command(port, frame)
  rescue
    ArgumentError -> false
  end

  @doc "SIGKILL by OS pid."
  def kill(os_pid) do
    System.cmd("kill", ["-9", Integer.to_string(os_pid)], stderr_to_stdout: true)
  rescue
    _ -> :ok
  end

  @doc """
  Waits until the port's process exits or `deadline` (monotonic ms) passes,
  giving each frame that arrives meanwhile to `on_frame.(frame, acc)` and
  each message of a host function's task (its answer, `:DOWN` or deadline,
  see DSPyBridge.Worker.HostCalls) to `on_task.(message, acc)`:
  `{:exited | :alive, acc}`.
  """
  def drain_until_exit(port, os_pid, deadline, acc, on_frame, on_task \\ fn _, acc -> acc end) do
    wait = max(deadline - System.monotonic_time(:millisecond), 0)
    again = &drain_until_exit(port, os_pid, deadline, &1, on_frame, on_task)

    receive do
      {^port, {:exit_status, _}} ->
        {:exited, acc}

      {:EXIT, ^port, _} ->
        kill(os_pid)
        {:exited, acc}

      {^port, {:data, frame}} ->
        again.(on_frame.(frame, acc))

      {ref, _} = message when is_reference(ref) ->
        again.(on_task.(message, acc))

      {:DOWN, _, :process, _, _} = message ->
        again.(on_task.(message, acc))

      {:timeout, _, {:callback_timeout, _}} = message ->
        again.(on_task.(message, acc))
    after
      wait -> {:alive, acc}
    end
  end

  def cancel_timer(nil), do: :ok
  def cancel_timer(timer), do: :erlang.cancel_timer(timer, async: true, info: false)

  @doc """
  Passes a worker event for a request to its caller's `listener` (an alias:
  once the caller stops listening the message is dropped). Never blocks.
  """
  def notify(nil, _name, _event), do: :ok

  def notify(listener, name, event) do
    send(listener, {listener, name, event})
    :ok
  end

  @doc "Answers a request's caller and releases its count on the pool's load counter."
  def reply(req, reply) do
    GenServer.reply(req.from, reply)
    release(req.load)
  end

  def acquire(nil), do: :ok
  def acquire({load, index}), do: :atomics.add(load, index + 1, 1)

  def release(nil), do: :ok
  def release({load, index}), do: :atomics.sub(load, index + 1, 1)

  @doc "Calls the pool's callback `name` (see the worker's `:pool` option); none without a pool."
  def hook(%{pool: nil}, _name, _args), do: :ok
  def hook(%{pool: pool}, name, args), do: apply(Map.fetch!(pool, name), args)

  def register(data, status), do: hook(data, :on_status, [self(), data.os_pid, status])
  def unregister(data), do: hook(data, :on_down, [self()])

  @doc "Answers a request's caller (see `reply/2`) and emits the request's telemetry."
  def answer(data, req, reply) do
    reply(req, reply)
    request_telemetry(data, req, reply)
  end

  defp request_telemetry(data, req, reply) do
    outcome =
      case reply do
        {:ok, _} -> :ok
        {:error, %Error{type: type}} -> type
      end

    Telemetry.execute(
      [:dspy_bridge, :request, :stop],
      %{duration: System.monotonic_time() - req.started},
      %{
        command: req.command,
        outcome: outcome,
        pool: data.pool && data.pool.name,
        worker: data.pool && data.pool.index
      }
    )
  end

  @doc "Delivers an event to `:on_event` and to telemetry."
  def emit(data, source, name, event_data) do
    event = %Event{
      name: name,
      source: source,
      data: event_data,
      pool: data.pool && data.pool.name,
      worker: data.pool && data.pool.index,
      os_pid: data.os_pid
    }

    case data.on_event do
      nil -> :ok
      fun when is_function(fun, 1) -> safe_call(fun, event)
      pid when is_pid(pid) -> send(pid, {:dspy_bridge_event, event})
    end

    Telemetry.execute([:dspy_bridge, :event], %{count: 1}, %{
      event: event,
      pool: event.pool,
      worker: event.worker
    })
  end

  defp safe_call(fun, event) do
    fun.(event)
  catch
    kind, reason ->
      Logger.warning("dspy_bridge event handler failed: #{Exception.format(kind, reason)}")
  end
end
