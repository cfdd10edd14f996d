defmodule DSPyBridge.Worker do
  @moduledoc """
  A `:gen_statem` owning one Python worker OS process through a `Port`.

  The port is opened with `{:spawn_executable, python}` and
  `[:binary, {:packet, 4}, :exit_status]`, so every message is one msgpack
  value behind a 4-byte big-endian length — the worker's wire format.

  ## Life cycle

    1. `init/1` opens the port and returns at once (so a pool starts its
       workers concurrently).
    2. The worker sends its `ready` event (within `:ready_timeout`, else
       the process stops and its OS process is killed).
    3. The `:replay` function (given by the pool) is called and the
       commands it returns are sent, batch after batch: this is how a
       restarted worker gets its sessions' LM configs and programs back.
    4. Only then does the worker take traffic. Requests that arrive earlier
       wait in its queue (up to their timeout).

  ## When a worker cannot start

  An interpreter that cannot be executed makes `start_link/1` return
  `{:error, {:spawn_failed, python, %DSPyBridge.Error{}}}`. A worker that
  exits before `ready`, or sends none within `:ready_timeout`, gives that
  error to `await_ready/2` callers and stops with `{:shutdown,
  {:worker_start_failed, error}}` (or `{:shutdown, :ready_timeout}`). The
  error is a `:worker_exited` one, not retryable, whose message names the
  interpreter, quotes the first stderr lines and names the setting that
  chooses the interpreter; `details` has `"reason" => "start_failed"`,
  `"python"`, `"args"`, `"exit_status"`, `"stderr"` (up to 20 lines) and
  `"fix"`.

  ## The worker's stderr

  The OS process's stderr is a pipe of its own (a fifo the start-up shell
  opens), read by a process beside the worker. With `stderr: :logger` (the
  default) each JSON line the worker writes is logged with `Logger` at its
  level, the message its event and fields, with metadata `pool`, `worker`
  (the index), `os_pid`, `worker_id` and, for a line written while a request
  ran, `request_id`, `command` and `session_id` (add them to your formatter's
  `:metadata` to see them). A line that is not JSON is logged as a warning.
  `stderr: :passthrough` copies the lines to the BEAM's stderr instead. The
  worker's own `:log_level` (`--log-level`) decides what it writes at all.

  ## Requests

  `request/4` sends a request and blocks its caller until the response
  with the same id arrives — responses may come in any order, many requests
  run concurrently. At most `:max_in_flight` requests are in flight; more
  wait in a queue of at most `:max_queue` requests, or, with
  `overflow: :error`, get an `:overloaded` error at once.

  When a request's `:timeout` runs out, its caller gets
  `{:error, %DSPyBridge.Error{type: :timeout}}`, the worker is sent `cancel`
  for that id, and the late response, when it comes, is dropped (and
  reported as a `"late_reply_dropped"` event). The request also carries
  `timeout_ms` (the timeout plus `:worker_timeout_margin`) so
  the worker abandons it on its own should the `cancel` be lost.

  With `listen: fun`, `request/4` also hands the worker's events for that
  request — `progress`, `stream` and `stream_status`, which name it by its
  wire id (`request_id`) — to `fun.(name, event)` in the calling process
  while it waits: all of them before it returns, in the order the worker
  sent them. This process matches each event to its request and sends it
  on without waiting for anyone (to an alias of the caller's, so events for
  a caller that stopped waiting are dropped); a request that timed out gets
  no more. The events also go to `:on_event`, as every event does. When
  `fun` raises, throws or exits, the request is abandoned as after its
  timeout (`cancel`, its late answer dropped) and the failure goes on in
  the caller (see `DSPyBridge.Telemetry`'s request `:exception`).

  If the OS process dies, every in-flight or queued caller gets
  `{:error, %DSPyBridge.Error{type: :worker_exited}}` at once and the
  process stops with `{:shutdown, {:worker_exited, status}}`, so its
  supervisor restarts it.

  ## Limits

  A request the worker could not read is never sent: the worker would
  answer `invalid_frame` with `id: nil`, which no caller can be matched
  with, so the call would wait out its whole timeout. Instead the call
  fails at once with `{:error, %DSPyBridge.Error{type: :limit_exceeded,
  retryable: false}}`, and nothing else is affected, when

    * its encoded frame is larger than the worker's `max_frame_bytes`
      (from `ready`'s `limits`; 67,108,864 — 64 MiB — when absent):
      `details` are `%{"limit" => "max_frame_bytes", "max_frame_bytes" =>
      limit, "size" => size}`, sizes in bytes of msgpack, without the
      4-byte length;
    * it nests arrays and maps deeper than the protocol's 128 levels (or
      `limits["max_depth"]`, should a worker announce one); the request
      envelope is the first level, the args map the second, and map keys
      count: `details` are `%{"limit" => "max_depth", "max_depth" => 128,
      "depth" => depth}`;
    * it holds more msgpack items than the worker's `max_frame_items` (when
      `limits` has one; each array and map counts 1, plus 1 per element or 2
      per map entry): `details` are `%{"limit" => "max_frame_items",
      "max_frame_items" => limit, "items" => items}`.

  The client's own commands (replay, init commands) are checked the same
  way; one over a limit is logged and counted as a failed replay.

  ## Engine failure

  When DSPy fails to load in the worker, it sends `engine_failed` and
  answers every DSPy command with `:engine_unavailable` (retryable). The
  process then logs the error, emits the event, leaves the pool's routing
  table and stops with `{:shutdown, {:engine_failed, message}}`, so its
  supervisor replaces the process: `terminate/3` lets the worker answer what
  is in flight (e.g. with `:engine_unavailable`) and fails whatever is left
  with `:worker_exited`. A worker whose engine can never load (a broken
  installation) is thus restarted until the supervisor's restart intensity
  gives up.

  ## A misbehaving worker

  Nothing a worker writes crashes the process or leaves a caller waiting
  beyond its timeout. A frame that is not msgpack, a value that is neither
  an event nor a response, a response with an id no call waits for (such as
  `invalid_frame`'s `id: nil`), a second `ready`, or a `session_evicted`
  naming no session (or one another worker serves) is logged, counted in
  `info/1`'s `:unexpected_frames` and dropped. A response to a pending call
  that is neither a success nor an error map gives that call an `:internal`
  error; an error map with fields of the wrong types is still an error (see
  `DSPyBridge.Error.from_wire/1`). Events the client does not know are
  passed on to subscribers.

  ## Recycling

  With `:max_requests`, `:max_age_ms` or `:max_memory_mb`, a ready worker
  replaces its OS process after that many requests, that long, or once its
  resident memory (RSS, read from `/proc/<os_pid>/status` every
  `:memory_check_ms`; on a system without `/proc` the limit is ignored,
  which is logged once) exceeds that many MiB: new requests wait in its
  queue, those in flight finish, the OS process is sent `shutdown`, and a
  fresh one starts and is replayed (as after a restart, but in the same
  Erlang process: no caller fails) before it serves the queue; a
  `"worker_recycled"` event is emitted, whose data has `"os_pid"` (the new
  OS process), `"previous_os_pid"` and `"reason"` (the limit's name:
  `"max_requests"`, `"max_age_ms"` or `"max_memory_mb"`), and `info/1`'s
  `:recycles` counts it. A `:max_memory_mb` below a fresh worker's RSS
  recycles it at every check.

  ## Stopping

  `terminate/3` (the process traps exits) sends `shutdown` with
  `:shutdown_grace`, keeps answering in-flight callers while
  the worker drains, waits for the OS process to exit, and kills it with
  `SIGKILL` by OS pid if it has not exited by then. When the process is
  killed outright, the port closes, the worker reads EOF on stdin and exits
  within a second — so no Python process outlives its owner.

  ## Options

  Validated when the worker starts (an unknown option or a value of the
  wrong type raises `ArgumentError`; see `DSPyBridge.Options`).
  `:python` to `:log_level` make the command (see `DSPyBridge.Command`).

  #{DSPyBridge.Options.table(:worker)}
  `:pool` is set by the pool: its name and the worker's index (for events
  and telemetry), and the callbacks through which the worker tells its pool
  what happens, run in the worker process: `:on_start` (0-arity),
  `:on_status` (pid, OS pid, status), `:on_down` (pid), `:on_record`
  (record, reply) for a successful recorded request, `:serves_session?`
  (session id), `:on_session_evicted` (session id) and `:host_function`
  (session id, name: `{:ok, run}` or `:error`), with `:tasks`, the
  `Task.Supervisor` the host functions run under. A worker without `:pool`
  calls nothing, and answers every `callback` with an error.

  ## Host functions

  A `callback` event from the worker (see `DSPyBridge.register_tools/3`)
  is answered without blocking this process: the function runs in a task
  under the pool's `Task.Supervisor`, with the callback's `timeout_ms` as
  its deadline, and its answer is sent as a `callback_reply` when it comes.
  The task is killed when its deadline passes, when the worker sends
  `callback_abandoned`, or when this process ends.

  `child_spec/1` also takes `:id`, the child's id (default
  `DSPyBridge.Worker`).
  """

  @behaviour :gen_statem
  require Logger

  alias DSPyBridge.{Command, Error, Options, Protocol}

  alias DSPyBridge.Worker.{
    Admission,
    Caller,
    Data,
    Effects,
    Frames,
    HostCalls,
    Outbound,
    Recycle,
    Replayer,
    Replies,
    Request,
    Shutdown,
    Spans,
    StartFailure
  }

  @call_margin 5_000

  @typedoc "A worker: pid or registered name."
  @type server :: GenServer.server()

  @typedoc "Options of `request/4` (`:record` and `:load` are used by the pool)."
  @type request_opt ::
          {:timeout, timeout()}
          | {:record, term()}
          | {:load, {:atomics.atomics_ref(), non_neg_integer()}}
          | {:listen, (String.t(), map() -> term())}

  @doc """
  A child spec whose `:shutdown` leaves time for the graceful stop
  (`:shutdown_grace` plus a margin for the SIGKILL fallback). Takes the
  options of `start_link/1` and `:id`; validates them.
  """
  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts) do
    {id, opts} = opts |> Options.validate!(:worker_child_spec) |> Keyword.pop(:id)

    %{
      id: id || __MODULE__,
      start: {__MODULE__, :start_link, [opts]},
      restart: :permanent,
      type: :worker,
      shutdown: Keyword.fetch!(opts, :shutdown_grace) + Keyword.fetch!(opts, :kill_after) + 4_000
    }
  end

  @doc """
  Starts a worker process linked to the caller; see the module doc for
  options. Raises `ArgumentError` for an unknown option or a value of the
  wrong type.
  """
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    opts = Options.validate!(opts, :worker)

    case opts[:name] do
      nil -> :gen_statem.start_link(__MODULE__, opts, [])
      name when is_atom(name) -> :gen_statem.start_link({:local, name}, __MODULE__, opts, [])
      name -> :gen_statem.start_link(name, __MODULE__, opts, [])
    end
  end

  @doc "Starts a worker process not linked to the caller (like `start_link/1`)."
  @spec start(keyword()) :: GenServer.on_start()
  def start(opts) do
    opts = Options.validate!(opts, :worker)

    case opts[:name] do
      nil -> :gen_statem.start(__MODULE__, opts, [])
      name when is_atom(name) -> :gen_statem.start({:local, name}, __MODULE__, opts, [])
      name -> :gen_statem.start(name, __MODULE__, opts, [])
    end
  end

  @doc """
  Sends `command` with `args` and waits for its response.

  Returns `{:ok, result}` (the decoded `result`, string keys) or
  `{:error, %DSPyBridge.Error{}}`. Options (validated):

  #{Options.table(:request)}
  """
  @spec request(server(), String.t(), map(), [request_opt()]) ::
          {:ok, term()} | {:error, Error.t()}
  def request(server, command, args \\ %{}, opts \\ []) do
    opts = Options.validate!(opts, :request)
    timeout = Keyword.fetch!(opts, :timeout)
    load = opts[:load]

    with {:ok, msg} <- Request.message(command, args, opts, load) do
      call_timeout = if timeout == :infinity, do: :infinity, else: timeout + @call_margin
      # The pool's load counter counts the call from now; the worker releases
      # it when it answers, whatever the outcome.
      Effects.acquire(load)

      case opts[:listen] do
        nil ->
          Caller.call(server, msg, timeout, call_timeout, load)

        listen ->
          listen = Admission.abandon_on_failure(listen, server)
          Caller.listened(server, msg, timeout, call_timeout, load, listen)
      end
    end
  end

  @doc """
  Sends a request without waiting: returns `{:ok, request_id}` to pass to
  `await_response/2` (the caller must be the process that awaits). Like
  `GenServer.send_request/2`, the request is ordered with the caller's
  later messages to the worker: once a later `info/1` returns, this request
  is in flight (or queued). Options: those of `request/4`.
  """
  @spec send_request(server(), String.t(), map(), [request_opt()]) ::
          {:ok, term()} | {:error, Error.t()}
  def send_request(server, command, args \\ %{}, opts \\ []) do
    opts = Options.validate!(opts, :request)

    with {:ok, msg} <- Request.message(command, args, opts, nil) do
      {:ok, :gen_server.send_request(server, msg)}
    end
  end

  @doc """
  Waits for the answer to a `send_request/4`. The worker always answers
  within the request's timeout (with a `:timeout` error if need be), so the
  default wait is `:infinity`; if the worker process dies the result is a
  `:worker_exited` error.
  """
  @spec await_response(term(), timeout()) :: {:ok, term()} | {:error, Error.t()}
  def await_response(request_id, timeout \\ :infinity) do
    case :gen_server.wait_response(request_id, timeout) do
      {:reply, reply} ->
        reply

      :timeout ->
        {:error, Error.new(:timeout, "no answer in #{timeout} ms")}

      {:error, {reason, _}} ->
        {:error, Error.new(:worker_exited, "worker not available: #{inspect(reason)}")}
    end
  end

  @doc """
  Waits until the worker has sent `ready` and finished its replay. When the
  worker cannot start (it exits before `ready`, or sends none within
  `:ready_timeout`) the error says why: see "When a worker cannot start" in
  the module doc.
  """
  @spec await_ready(server(), timeout()) :: :ok | {:error, Error.t()}
  def await_ready(server, timeout \\ 30_000) do
    GenServer.call(server, :await_ready, timeout)
  catch
    :exit, {{:shutdown, {:worker_start_failed, %Error{} = error}}, _} ->
      {:error, error}

    :exit, {reason, _} ->
      {:error, Error.new(:worker_exited, "worker not ready: #{inspect(reason)}")}
  end

  @doc """
  Client-side information about the worker (atom keys): `:status`,
  `:os_pid`, `:worker_id`, `:in_flight`, `:queued`, `:max_in_flight`,
  `:max_frame_bytes` (the worker's announced frame limit), `:uptime_ms`,
  the counters `:requests`, `:timeouts`, `:cancels_sent`,
  `:late_replies_dropped`, `:overloaded`, `:limit_exceeded` (requests
  refused before sending), `:unexpected_frames` (frames from the worker
  that were undecodable, malformed, or answered no pending request) and
  `:callbacks` (host function calls the worker asked for),
  `:callbacks_running` (those running now), `:recycles` (see
  "Recycling"), and the `ready` event as `:ready`.
  """
  @spec info(server()) :: map()
  def info(server), do: GenServer.call(server, :info)

  @doc "The worker's OS process id."
  @spec os_pid(server()) :: non_neg_integer()
  def os_pid(server), do: GenServer.call(server, :os_pid)

  @doc false
  # Used by the pool when it stops: asks the Python process to shut
  # down now, so all of a pool's workers drain concurrently.
  @spec prepare_stop(server()) :: :ok
  def prepare_stop(server), do: GenServer.cast(server, :prepare_stop)

  # -- :gen_statem --------------------------------------------------------------
  #
  # States: :starting (port open, waiting for `ready`) -> :replaying (init
  # commands and replay in flight) -> :ready (serving) -> :draining (asked to
  # shut down; new requests get :shutting_down), and :ready -> :recycling ->
  # :starting at a recycling limit. The worker's death, a ready
  # timeout or an engine failure stops the process from any state. Side
  # effects of a state (registering with the pool, starting the replay,
  # answering ready waiters, sending the queue) run on entering it.
  #
  # The state data is a Worker.Data; a caller's request becomes a
  # Worker.Request in the Worker.Requests table. Requests come in through
  # Worker.Admission and go out through Worker.Outbound; frames from the
  # worker are handled by Worker.Frames, responses by Worker.Replies, the
  # replay is driven by Worker.Replayer, and the end of the process is
  # Worker.Shutdown's. All I/O is in Worker.Effects.

  @impl true
  def callback_mode, do: [:state_functions, :state_enter]

  @impl true
  def init(opts) do
    Process.flag(:trap_exit, true)

    ready_timeout = Keyword.fetch!(opts, :ready_timeout)

    command = Command.resolve(opts)

    case Effects.open(command, ready_timeout, opts[:pool]) do
      {:error, {:spawn_failed, _python, error} = reason} ->
        Logger.error("dspy_bridge worker not started: #{error.message}")
        {:stop, reason}

      {:ok, port, os_pid, start} ->
        data = %{Data.new(opts, port, os_pid) | start: start, command: command}
        data = Recycle.configure(data)
        Effects.hook(data, :on_start, [])
        # registered before start_link returns (entering :starting registers too,
        # but after it): the pool's await-ready step reads the table next
        Effects.register(data, :starting)
        {:ok, :starting, data, [{{:timeout, :ready}, ready_timeout, nil}]}
    end
  end

  @doc false
  def starting(:enter, _old, data) do
    Effects.register(data, :starting)
    :keep_state_and_data
  end

  def starting(:info, {port, {:data, frame}}, %Data{port: port} = data) do
    case Protocol.decode(frame) do
      {:event, "ready", event} ->
        StartFailure.discard(data.start)
        Frames.ready(event, data)

      decoded ->
        Frames.handle(decoded, :starting, data)
    end
  end

  def starting(:info, {port, {:exit_status, status}}, %Data{port: port} = data) do
    Spans.worker_exit(data, status, :start_failed)
    error = StartFailure.exited(data.start, status)
    Shutdown.start_failed(data, error, status, {:shutdown, {:worker_start_failed, error}})
  end

  def starting(type, event, data), do: not_ready(type, event, :starting, data)

  @doc false
  def replaying(:enter, _old, data) do
    # the first batch is sent by the step, which may find nothing to replay
    {:keep_state, Replayer.start(data), [{:state_timeout, 0, :step}]}
  end

  def replaying(:state_timeout, :step, data), do: Replayer.step(data)
  def replaying(type, event, data), do: not_ready(type, event, :replaying, data)

  @doc false
  def ready(:enter, _old, data) do
    Enum.each(data.ready_waiters, &:gen_statem.reply(&1, :ok))
    data = %{data | ready_waiters: []}
    Effects.register(data, :ready)
    {data, actions} = Recycle.drain_queue(data)
    {:keep_state, data, [{{:timeout, :ready}, :cancel}] ++ Recycle.timers(data) ++ actions}
  end

  def ready({:call, from}, {:request, _, _, _, _, _} = msg, data),
    do: data |> Admission.admit(from, msg) |> Recycle.admitted()

  def ready(:cast, {:listened, from, listener, {:request, _, _, _, _, _} = msg}, data),
    do: data |> Admission.admit(from, msg, listener) |> Recycle.admitted()

  def ready({:timeout, :recycle}, limit, data), do: Recycle.limit_reached(data, limit)
  def ready({:timeout, :memory_check}, nil, data), do: Recycle.check_memory(data)

  def ready({:call, from}, :await_ready, _data), do: {:keep_state_and_data, [{:reply, from, :ok}]}
  def ready(type, event, data), do: common(type, event, :ready, data)

  # :recycling (see Worker.Recycle): requests wait, as while :starting.
  @doc false
  def recycling(:enter, _old, data), do: Recycle.enter(data)

  def recycling(
        :info,
        {port, {:exit_status, status}},
        %Data{port: port, recycle: %{stopping: true}} = data
      ),
      do: data |> Spans.worker_exit(status, :recycled) |> Recycle.exited(status)

  def recycling(:state_timeout, :kill, data),
    do: data |> Spans.worker_exit(nil, :recycled) |> Recycle.kill()

  def recycling(type, event, data), do: Recycle.check(not_ready(type, event, :recycling, data))

  @doc false
  def draining(:enter, _old, _data), do: :keep_state_and_data

  def draining({:call, from}, {:request, command, _, _, _, load}, _data) do
    Effects.release(load)
    error = Error.new(:shutting_down, "worker is stopping; #{command} not sent")
    {:keep_state_and_data, [{:reply, from, {:error, error}}]}
  end

  def draining(:cast, {:listened, from, _listener, {:request, _, _, _, _, _} = msg}, data),
    do: draining({:call, from}, msg, data)

  def draining(:cast, :prepare_stop, _data), do: :keep_state_and_data

  def draining(:info, {port, {:exit_status, status}}, %Data{port: port} = data) do
    Spans.worker_exit(data, status, :shutdown)
    Logger.debug("dspy_bridge worker #{data.os_pid} stopped with status #{status}")
    {:stop, :shutdown, Replies.fail_all(%{data | exited: true}, "worker stopped")}
  end

  def draining(type, event, data), do: common(type, event, :draining, data)

  # Requests wait in the queue until the worker is ready (up to their timeout).
  defp not_ready({:call, from}, {:request, _, _, _, _, _} = msg, _state, data),
    do: Admission.hold(data, from, msg)

  defp not_ready(:cast, {:listened, from, listener, {:request, _, _, _, _, _} = msg}, _, data),
    do: Admission.hold(data, from, msg, listener)

  defp not_ready({:timeout, :ready}, nil, :starting, data) do
    Spans.worker_exit(data, nil, :ready_timeout)
    Effects.kill(data.os_pid)
    error = StartFailure.timed_out(data.start)
    Shutdown.start_failed(data, error, nil, {:shutdown, :ready_timeout})
  end

  defp not_ready({:timeout, :ready}, nil, state, data) do
    Logger.error("dspy_bridge worker #{data.os_pid} not ready in time (#{state}); killing it")
    Spans.worker_exit(data, nil, :ready_timeout)
    Effects.kill(data.os_pid)
    data = Replies.fail_all(%{data | exited: true}, "worker did not become ready in time")
    {:stop, {:shutdown, :ready_timeout}, data}
  end

  defp not_ready(type, event, state, data), do: common(type, event, state, data)

  # Events handled alike in every state.
  defp common({:call, from}, :await_ready, _state, data),
    do: {:keep_state, %{data | ready_waiters: [from | data.ready_waiters]}}

  defp common({:call, from}, :os_pid, _state, data),
    do: {:keep_state_and_data, [{:reply, from, data.os_pid}]}

  defp common({:call, from}, :info, state, data),
    do: {:keep_state_and_data, [{:reply, from, Data.info(data, state)}]}

  # (a worker being recycled was sent its shutdown already: it drains, not restarts)
  defp common(:cast, :prepare_stop, _state, %Data{recycle: %{stopping: true}} = data),
    do: {:next_state, :draining, data}

  defp common(:cast, :prepare_stop, _state, data),
    do: {:next_state, :draining, Outbound.send_shutdown(data)}

  defp common(:info, {port, {:data, frame}}, state, %Data{port: port} = data),
    do: Frames.handle(Protocol.decode(frame), state, data)

  defp common(:info, {port, {:exit_status, status}}, _state, %Data{port: port} = data) do
    Spans.worker_exit(data, status, :exited)

    Shutdown.exited(data,
      why: " exited with status #{status}",
      message: "worker exited with status #{status}",
      exit_status: status,
      reason: status
    )
  end

  defp common(:info, {:timeout, _tref, {:req_timeout, id}}, state, data),
    do: {:keep_state, Admission.timed_out(data, id, state)}

  defp common(:cast, {:caller_failed, pid, failure}, state, data),
    do: {:keep_state, Admission.caller_failed(data, pid, failure, state)}

  # A host function's task (see Worker.HostCalls): its answer, its end, its deadline.
  defp common(:info, {ref, answer}, _state, data) when is_reference(ref),
    do: {:keep_state, HostCalls.finished(data, ref, answer)}

  defp common(:info, {:DOWN, ref, :process, _pid, reason}, _state, data),
    do: {:keep_state, HostCalls.down(data, ref, reason)}

  defp common(:info, {:timeout, _tref, {:callback_timeout, ref}}, _state, data),
    do: {:keep_state, HostCalls.timed_out(data, ref)}

  # A write to a dead process can close the port with :epipe and no exit
  # status: that is the worker's death too. The process is killed in case it
  # only closed its stdin.
  defp common(:info, {:EXIT, port, reason}, _state, %Data{port: port} = data) do
    Spans.worker_exit(data, nil, :port_closed)

    Shutdown.exited(data,
      why: ": port closed (#{inspect(reason)})",
      message: "worker port closed: #{inspect(reason)}",
      exit_status: nil,
      reason: reason,
      kill?: true
    )
  end

  defp common(:info, {:EXIT, _pid, reason}, _state, _data), do: {:stop, reason}
  defp common(_type, _event, _state, _data), do: :keep_state_and_data

  # Asks the worker to stop, keeps answering callers while it drains, and
  # makes sure the OS process is gone before returning.
  @impl true
  def terminate(reason, state, data) do
    Shutdown.terminate(reason, state, data)
    Spans.worker_stopped(data, reason)
  end
end
