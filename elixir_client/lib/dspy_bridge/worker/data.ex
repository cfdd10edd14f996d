defmodule DSPyBridge.Worker.Data do
  @moduledoc false
  # The state data of DSPyBridge.Worker: its options, its port, its request
  # table (DSPyBridge.Worker.Requests), its running host function calls
  # (DSPyBridge.Worker.Callbacks), its replay, the `ready` event and the
  # limits it announced, and the counters `DSPyBridge.Worker.info/1` reports
  # (which are counted, and the info map built, here).

  require Logger

  alias DSPyBridge.Protocol
  alias DSPyBridge.Worker.{Callbacks, Replay, Requests}

  @counters [
    :requests,
    :timeouts,
    :cancels_sent,
    :late_replies_dropped,
    :overloaded,
    :limit_exceeded,
    :unexpected_frames,
    :callbacks,
    :recycles
  ]

  @enforce_keys [:port, :os_pid]
  defstruct [
    :port,
    :os_pid,
    :pool,
    :on_event,
    :replay_fun,
    :max_in_flight,
    :max_queue,
    :overflow,
    :margin,
    :grace,
    :kill_after,
    :limits,
    :requests,
    :callbacks,
    :replay,
    :ready,
    :started_at,
    :counters,
    :start,
    :command,
    :ready_timeout,
    recycle: %{
      max_requests: nil,
      max_age_ms: nil,
      max_memory_mb: nil,
      memory_check_ms: nil,
      served: 0,
      stopping: false,
      reason: nil,
      rss_kb: nil
    },
    init_commands: [],
    ready_waiters: [],
    exited: false
  ]

  @type counter ::
          :requests
          | :timeouts
          | :cancels_sent
          | :late_replies_dropped
          | :overloaded
          | :limit_exceeded
          | :unexpected_frames
          | :callbacks
          | :recycles

  @type t :: %__MODULE__{
          port: port(),
          os_pid: non_neg_integer(),
          pool: map() | nil,
          on_event: (DSPyBridge.Event.t() -> term()) | pid() | nil,
          replay_fun: (() -> [[{String.t(), map()}]]) | nil,
          max_in_flight: pos_integer(),
          max_queue: non_neg_integer(),
          overflow: :queue | :error,
          margin: non_neg_integer(),
          grace: non_neg_integer(),
          kill_after: non_neg_integer(),
          limits: Protocol.limits(),
          requests: Requests.t(),
          callbacks: Callbacks.t(),
          replay: Replay.t() | nil,
          ready: map() | nil,
          started_at: integer(),
          counters: %{counter() => non_neg_integer()},
          start: map() | nil,
          command: map() | nil,
          ready_timeout: pos_integer() | nil,
          recycle: map(),
          init_commands: [{String.t(), map()}],
          ready_waiters: [GenServer.from()],
          exited: boolean()
        }

  @doc """
  The data of a worker whose port was just opened, from the worker's
  options as validated by `DSPyBridge.Options` (defaults filled in).
  """
  @spec new(keyword(), port(), non_neg_integer()) :: t()
  def new(opts, port, os_pid) do
    %__MODULE__{
      port: port,
      os_pid: os_pid,
      pool: opts[:pool],
      on_event: opts[:on_event],
      init_commands: Keyword.fetch!(opts, :init_commands),
      replay_fun: opts[:replay],
      max_in_flight: Keyword.fetch!(opts, :max_in_flight),
      max_queue: Keyword.fetch!(opts, :max_queue),
      overflow: Keyword.fetch!(opts, :overflow),
      margin: Keyword.fetch!(opts, :worker_timeout_margin),
      grace: Keyword.fetch!(opts, :shutdown_grace),
      kill_after: Keyword.fetch!(opts, :kill_after),
      ready_timeout: Keyword.fetch!(opts, :ready_timeout),
      recycle: %{
        max_requests: opts[:max_requests],
        max_age_ms: opts[:max_age_ms],
        max_memory_mb: opts[:max_memory_mb],
        memory_check_ms: Keyword.fetch!(opts, :memory_check_ms),
        served: 0,
        stopping: false,
        reason: nil,
        rss_kb: nil
      },
      limits: Protocol.default_limits(),
      requests: Requests.new(),
      callbacks: Callbacks.new(),
      started_at: System.monotonic_time(:millisecond),
      counters: Map.new(@counters, &{&1, 0})
    }
  end

  @doc "Adds one to counter `key`."
  @spec bump(t(), counter()) :: t()
  def bump(data, key), do: %{data | counters: Map.update!(data.counters, key, &(&1 + 1))}

  @doc "Logs a frame from the worker that was dropped (`what` it was) and counts it."
  @spec unexpected(t(), String.t()) :: t()
  def unexpected(data, what) do
    Logger.warning("dspy_bridge worker #{data.os_pid} sent #{what}")
    bump(data, :unexpected_frames)
  end

  @doc "Requests whose callers wait: in flight or queued."
  @spec pending(t()) :: non_neg_integer()
  def pending(data), do: data.requests.in_flight + data.requests.queued

  @doc "The map `DSPyBridge.Worker.info/1` returns, in `state`."
  @spec info(t(), atom()) :: map()
  def info(data, state) do
    Map.merge(data.counters, %{
      status: status(state),
      os_pid: data.os_pid,
      worker_id: data.ready && data.ready["worker_id"],
      in_flight: data.requests.in_flight,
      queued: data.requests.queued,
      callbacks_running: Callbacks.size(data.callbacks),
      max_in_flight: data.max_in_flight,
      max_frame_bytes: data.limits.max_frame_bytes,
      uptime_ms: System.monotonic_time(:millisecond) - data.started_at,
      ready: data.ready
    })
  end

  @doc "The status the pool and `info/1` show for `state`: the state, with `:draining` as `:stopping`."
  @spec status(atom()) :: atom()
  def status(:draining), do: :stopping
  def status(state), do: state
end
