defmodule DSPyBridge.Telemetry do
  @moduledoc """
  `:telemetry` events, in the conventions of Finch and Ecto.

  `:telemetry` is an optional dependency in spirit only: it is not in
  `mix.exs` (this project is built where Hex cannot be reached, and the
  client vendors nothing). When the host application has it loaded, the
  client emits the events below through `:telemetry.execute/3`; otherwise
  they cost one cached lookup each and do nothing. If `:telemetry` is loaded
  after the first event, call `refresh/0`. `events/0` lists every event
  name, for `:telemetry.attach_many/4`.

  As with `:telemetry.span/3`, every `:start` event has the measurements
  `system_time` and `monotonic_time`, every `:stop` and `:exception` event
  `duration` and `monotonic_time` (times in `:native` units: convert with
  `System.convert_time_unit/3`). Every event is emitted in a
  worker's process, so a handler runs there, between the
  worker's frames, and should be quick. Every event's metadata has `pool`
  (the pool's name) and `worker` (the worker's index in it), both `nil`
  for a worker started without a pool.

  ## Requests

  A request starts when a worker process accepts a caller's call
  (every call of the API, once per worker it reaches), and ends with exactly one `:stop` or `:exception`.

    * `[:dspy_bridge, :request, :start]` — measurements `%{system_time,
      monotonic_time}`; metadata `%{command: String.t(), pool, worker}`.
    * `[:dspy_bridge, :request, :stop]` — the caller got its answer:
      measurements `%{duration, monotonic_time}`; metadata `%{command,
      outcome: :ok | DSPyBridge.Error.type(), pool, worker}`. An `{:error,
      %DSPyBridge.Error{}}` answer is a `:stop` whose `outcome` is its type:
      an error of the worker's (`:not_found`, ...), or the client's
      `:timeout`, `:overloaded`, `:limit_exceeded`, `:worker_exited` (the
      OS process died, or the worker stopped, with the request pending).
    * `[:dspy_bridge, :request, :exception]` — the caller raised, threw or
      exited while it waited: its `listen` function (`on_progress:`,
      `on_chunk:`) failed with the request in flight. The worker abandons
      the request as after a timeout (the worker is sent `cancel`, its late
      answer is dropped); the caller's exception goes on as it was.
      Measurements `%{duration, monotonic_time}`; metadata `%{command,
      pool, worker, kind: :error | :exit | :throw, reason: term(),
      stacktrace: Exception.stacktrace()}`. (A request the worker answered
      before it heard of the failure has its `:stop` instead. A caller
      killed outright runs no code: its request ends with a `:stop` when
      the worker answers, to no one.)

  A request refused at once by a stopping worker (`:shutting_down`), or one
  that never reached a worker process (`noproc`), has no events.

  ## The queue

  A worker sends at most `:max_in_flight` requests at a time; more wait in
  its queue of at most `:max_queue` (the pool's and worker's options), as do requests
  that arrive while it starts, replays or is recycled.

    * `[:dspy_bridge, :queue, :start]` — a request joins the queue:
      measurements `%{system_time, monotonic_time, queued: pos_integer()}`
      (the queue's length with it); metadata `%{command, pool, worker,
      reason: :max_in_flight | :not_ready}`.
    * `[:dspy_bridge, :queue, :stop]` — it leaves the queue: measurements
      `%{duration, monotonic_time}` (`duration`: the time it waited);
      metadata `%{command, pool, worker, outcome: :sent | :timeout |
      :worker_exited}` (`:sent`: taken out to be sent to the worker).
    * `[:dspy_bridge, :queue, :overloaded]` — a request refused with
      `:overloaded` (the queue is full, or `overflow: :error` and
      `:max_in_flight` are reached): measurements `%{system_time, in_flight:
      non_neg_integer(), queued: non_neg_integer()}`; metadata `%{command,
      pool, worker}`. Its request then has its `:stop` (`outcome:
      :overloaded`).

  ## Worker OS processes

    * `[:dspy_bridge, :worker, :start]` — an OS process sent `ready`
      (before its replay, then it serves): measurements `%{system_time,
      monotonic_time, startup_duration}` (`startup_duration`: from spawning
      it to its `ready`, millisecond precision); metadata `%{pool, worker,
      os_pid: non_neg_integer()}`.
    * `[:dspy_bridge, :worker, :replay]` — the init commands (`:default_lm`)
      and the recorded sessions (LM configs, host functions, programs) were
      replayed into it, when there was anything to replay: measurements
      `%{duration, commands: non_neg_integer(), failed: non_neg_integer()}`
      (millisecond precision); metadata `%{pool, worker, os_pid}`.
    * `[:dspy_bridge, :worker, :exit]` — the OS process ended:
      measurements `%{system_time, duration, in_flight: non_neg_integer()}`
      (`duration`: how long it ran, millisecond precision; `in_flight`: the
      requests waiting on it, in flight or queued, when it ended or was told
      to stop: they get `:worker_exited`, except those a stopping worker
      answered first); metadata `%{pool, worker, os_pid, exit_status:
      integer() | nil, reason: reason}`, `reason` being

      | reason | |
      | --- | --- |
      | `:exited` | it died while serving or replaying (e.g. `kill -9`: `exit_status` 137) |
      | `:port_closed` | its port closed without an exit status (it was killed) |
      | `:start_failed` | it exited before `ready` |
      | `:ready_timeout` | it sent no `ready`, or finished no replay, within `:ready_timeout`: killed |
      | `:recycled` | it was stopped (or killed) to be replaced (`:max_requests`, `:max_age_ms`) |
      | `:shutdown` | it stopped when asked to, with its pool |
      | other | the worker process's stop reason, when it stopped the OS process on its way out (e.g. `{:shutdown, {:engine_failed, message}}`); `exit_status` is then `nil` |

  A recycled worker emits `:exit` then `:start` (and `:replay`) in the same
  Erlang process; a restarted one does so in its new process.

  ## Host functions

    * `[:dspy_bridge, :tool, :start]` and `[:dspy_bridge, :tool, :stop]` —
      a host function called for a worker's `callback` (a ReAct tool, a
      reward, a mock LM's generator; see `DSPyBridge.register_tools/3`):
      measurements `%{system_time, monotonic_time}` at the start and
      `%{duration, monotonic_time}` at the stop; metadata `%{function:
      String.t(), purpose: "tool" | "reward" | "mock", session_id:
      String.t(), callback_id: String.t(), request_id: term(), pool,
      worker}`, and at the stop `outcome`:

      | outcome | |
      | --- | --- |
      | `:ok` | it returned a result, sent to the worker |
      | `:error` | it returned `{:error, reason}`, sent as an error answer |
      | `:exception` | it raised, threw or exited (an error answer) |
      | `:unencodable` | its result cannot be sent as msgpack (an error answer) |
      | `:too_large` | its result is over the worker's frame limits (an error answer) |
      | `:timeout` | it did not return within the callback's `timeout_ms`: killed, an error answer |
      | `:abandoned` | the worker stopped waiting (`callback_abandoned`; metadata `reason`): killed |
      | `:not_found` | no function of that name is registered for the session (an error answer) |
      | `:worker_exited` | the worker process ended while it ran: killed |

  ## Events

    * `[:dspy_bridge, :event]` — every `DSPyBridge.Event` (the worker's and
      the client's, as subscribers get them): measurements `%{count: 1}`,
      metadata `%{event: DSPyBridge.Event.t(), pool, worker}`.

  ## A pool across nodes (`cluster: true`; see `docs/cluster.md`)

    * `[:dspy_bridge, :cluster, :ownership]` — a session moved, on the node
      it leaves and on the node it reaches: measurements `%{duration}` (the
      drain or the replay), metadata `%{pool, session, from, to, direction:
      :in | :out, reason: :join | :leave}`;
    * `[:dspy_bridge, :cluster, :view_wait, :start | :stop]` — a call routed
      here by another node waited for this node's membership view to agree
      on the session's owner: at the stop, metadata `outcome: :agreed |
      :timed_out` (besides `pool`, `session`, `owner`), in the calling process.
  """

  @events [
    [:dspy_bridge, :request, :start],
    [:dspy_bridge, :request, :stop],
    [:dspy_bridge, :request, :exception],
    [:dspy_bridge, :queue, :start],
    [:dspy_bridge, :queue, :stop],
    [:dspy_bridge, :queue, :overloaded],
    [:dspy_bridge, :worker, :start],
    [:dspy_bridge, :worker, :replay],
    [:dspy_bridge, :worker, :exit],
    [:dspy_bridge, :tool, :start],
    [:dspy_bridge, :tool, :stop],
    [:dspy_bridge, :event],
    [:dspy_bridge, :cluster, :ownership],
    [:dspy_bridge, :cluster, :view_wait, :start],
    [:dspy_bridge, :cluster, :view_wait, :stop]
  ]

  @doc "The name of every event the client emits (see the module doc)."
  @spec events() :: [[atom()]]
  def events, do: @events

  @doc """
  Calls `:telemetry.execute/3` if `:telemetry` is available, else does
  nothing. A `:start` event without `system_time` or `monotonic_time`, and a
  `:stop` or `:exception` event without `monotonic_time`, get them (now), so
  every event has the measurements of `:telemetry.span/3`.
  """
  @spec execute([atom()], map(), map()) :: :ok
  def execute(event, measurements, metadata) do
    if enabled?() do
      measurements = with_span_times(List.last(event), measurements)
      # apply/3 keeps the compiler from requiring the module.
      apply(:telemetry, :execute, [event, measurements, metadata])
    end

    :ok
  end

  defp with_span_times(:start, measurements) do
    measurements
    |> Map.put_new_lazy(:system_time, &System.system_time/0)
    |> Map.put_new_lazy(:monotonic_time, &System.monotonic_time/0)
  end

  defp with_span_times(end_, measurements) when end_ in [:stop, :exception],
    do: Map.put_new_lazy(measurements, :monotonic_time, &System.monotonic_time/0)

  defp with_span_times(_, measurements), do: measurements

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
