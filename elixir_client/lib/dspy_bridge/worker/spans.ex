defmodule DSPyBridge.Worker.Spans do
  @moduledoc false
  # The worker's :telemetry events (documented in DSPyBridge.Telemetry, which
  # emits them): their measurements and metadata, made from the worker's state.
  # Each event's measurements and metadata are made here, beside their
  # documentation; the worker's modules call these with their state data
  # (`data`, a DSPyBridge.Worker.Data) and a caller's request (`req`, a
  # DSPyBridge.Worker.Request). Each returns `data`, so it can sit in a pipe.

  alias DSPyBridge.Telemetry
  alias DSPyBridge.Worker.Data

  @doc false
  @spec request_start(Data.t(), map()) :: Data.t()
  def request_start(data, req) do
    Telemetry.execute(
      [:dspy_bridge, :request, :start],
      %{system_time: System.system_time(), monotonic_time: req.started},
      request_meta(data, req)
    )

    data
  end

  @doc false
  @spec request_exception(Data.t(), map(), {:error | :exit | :throw, term(), list()}) :: Data.t()
  def request_exception(data, req, {kind, reason, stacktrace}) do
    now = System.monotonic_time()

    Telemetry.execute(
      [:dspy_bridge, :request, :exception],
      %{duration: now - req.started, monotonic_time: now},
      Map.merge(request_meta(data, req), %{kind: kind, reason: reason, stacktrace: stacktrace})
    )

    data
  end

  @doc false
  @spec queue_start(Data.t(), map(), :max_in_flight | :not_ready) :: Data.t()
  def queue_start(data, req, reason) do
    # a request is queued as it is accepted: its start is its queue time's
    Telemetry.execute(
      [:dspy_bridge, :queue, :start],
      %{system_time: System.system_time(), monotonic_time: req.started, queued: queued(data)},
      Map.put(request_meta(data, req), :reason, reason)
    )

    data
  end

  @doc false
  @spec queue_stop(Data.t(), map(), :sent | :timeout | :worker_exited) :: Data.t()
  def queue_stop(data, req, outcome) do
    now = System.monotonic_time()

    Telemetry.execute(
      [:dspy_bridge, :queue, :stop],
      %{duration: now - req.started, monotonic_time: now},
      Map.put(request_meta(data, req), :outcome, outcome)
    )

    data
  end

  @doc false
  @spec overloaded(Data.t(), map()) :: Data.t()
  def overloaded(data, req) do
    Telemetry.execute(
      [:dspy_bridge, :queue, :overloaded],
      %{system_time: System.system_time(), in_flight: in_flight(data), queued: queued(data)},
      request_meta(data, req)
    )

    data
  end

  @doc false
  @spec worker_start(Data.t()) :: Data.t()
  def worker_start(data) do
    Telemetry.execute(
      [:dspy_bridge, :worker, :start],
      %{startup_duration: since_ms(data.started_at)},
      worker_meta(data)
    )

    data
  end

  @doc false
  @spec worker_replay(Data.t(), map()) :: Data.t()
  def worker_replay(data, %{"commands" => commands, "failed" => failed, "duration_ms" => ms}) do
    Telemetry.execute(
      [:dspy_bridge, :worker, :replay],
      %{
        duration: System.convert_time_unit(ms, :millisecond, :native),
        commands: commands,
        failed: failed
      },
      worker_meta(data)
    )

    data
  end

  @doc false
  # Called where the end of the OS process is seen (or it is killed), before
  # its waiting callers are failed.
  @spec worker_exit(Data.t(), integer() | nil, term()) :: Data.t()
  def worker_exit(data, exit_status, reason) do
    Telemetry.execute(
      [:dspy_bridge, :worker, :exit],
      %{
        system_time: System.system_time(),
        duration: since_ms(data.started_at),
        in_flight: failing(data, reason)
      },
      Map.merge(worker_meta(data), %{exit_status: exit_status, reason: reason})
    )

    data
  end

  @doc false
  # terminate/3, once the OS process is stopped: its `:exit`, unless its
  # end was seen (and reported) before the worker process began to stop.
  @spec worker_stopped(Data.t(), term()) :: Data.t()
  def worker_stopped(%{exited: true} = data, _reason), do: data
  def worker_stopped(data, reason), do: worker_exit(data, nil, reason)

  # the callers an exit fails: all that wait, but for a recycled worker,
  # whose queue waits for its next OS process (and has nothing in flight)
  defp failing(data, :recycled), do: in_flight(data)
  defp failing(data, _reason), do: Data.pending(data)

  defp request_meta(data, req),
    do: %{command: req.command, pool: pool_name(data), worker: worker_index(data)}

  defp worker_meta(data),
    do: %{pool: pool_name(data), worker: worker_index(data), os_pid: data.os_pid}

  defp pool_name(data), do: data.pool && data.pool.name
  defp worker_index(data), do: data.pool && data.pool.index
  defp queued(data), do: data.requests.queued
  defp in_flight(data), do: data.requests.in_flight

  defp since_ms(started_ms),
    do:
      System.convert_time_unit(
        System.monotonic_time(:millisecond) - started_ms,
        :millisecond,
        :native
      )
end
