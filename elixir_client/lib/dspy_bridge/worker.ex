defmodule DSPyBridge.Worker do
  @moduledoc """
  A GenServer owning one Python worker OS process through a `Port`.

  The port is opened with `{:spawn_executable, python}` and
  `[:binary, {:packet, 4}, :exit_status]`, so every message is one msgpack
  value behind a 4-byte big-endian length — the worker's wire format.

  ## Life cycle

    1. `init/1` opens the port and returns at once (so a pool starts its
       workers concurrently).
    2. The worker sends its `ready` event (within `:ready_timeout`, default
       15 s, else the GenServer stops and its OS process is killed).
    3. The `:replay` function (given by the pool) is called and the
       commands it returns are sent, batch after batch: this is how a
       restarted worker gets its sessions' LM configs and programs back.
    4. Only then does the worker take traffic. Requests that arrive earlier
       wait in its queue (up to their timeout).

  ## Requests

  `request/4` sends a request and blocks its caller until the response
  with the same id arrives — responses may come in any order, many requests
  run concurrently. At most `:max_in_flight` requests (default 200) are in
  flight; more wait in a queue of at most `:max_queue` (default 10,000)
  requests, or, with `overflow: :error`, get an `:overloaded` error at once.

  When a request's `:timeout` runs out, its caller gets
  `{:error, %DSPyBridge.Error{type: :timeout}}`, the worker is sent `cancel`
  for that id, and the late response, when it comes, is dropped (and
  reported as a `"late_reply_dropped"` event). The request also carries
  `timeout_ms` (the timeout plus `:worker_timeout_margin`, default 1 s) so
  the worker abandons it on its own should the `cancel` be lost.

  If the OS process dies, every in-flight or queued caller gets
  `{:error, %DSPyBridge.Error{type: :worker_exited}}` at once and the
  GenServer stops with `{:shutdown, {:worker_exited, status}}`, so its
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
  GenServer then logs the error, emits the event, leaves the pool's routing
  table and stops with `{:shutdown, {:engine_failed, message}}`, so its
  supervisor replaces the process: `terminate/2` lets the worker answer what
  is in flight (e.g. with `:engine_unavailable`) and fails whatever is left
  with `:worker_exited`. A worker whose engine can never load (a broken
  installation) is thus restarted until the supervisor's restart intensity
  gives up.

  ## A misbehaving worker

  Nothing a worker writes crashes the GenServer or leaves a caller waiting
  beyond its timeout. A frame that is not msgpack, a value that is neither
  an event nor a response, a response with an id no call waits for (such as
  `invalid_frame`'s `id: nil`), a second `ready`, or a `session_evicted`
  naming no session (or one another worker serves) is logged, counted in
  `info/1`'s `:unexpected_frames` and dropped. A response to a pending call
  that is neither a success nor an error map gives that call an `:internal`
  error; an error map with fields of the wrong types is still an error (see
  `DSPyBridge.Error.from_wire/1`). Events the client does not know are
  passed on to subscribers.

  ## Stopping

  `terminate/2` (the GenServer traps exits) sends `shutdown` with
  `:shutdown_grace` (default 2 s), keeps answering in-flight callers while
  the worker drains, waits for the OS process to exit, and kills it with
  `SIGKILL` by OS pid if it has not exited by then. When the GenServer is
  killed outright, the port closes, the worker reads EOF on stdin and exits
  within a second — so no Python process outlives its owner.

  ## Options

    * `:python`, `:args`, `:extra_args`, `:env`, `:cd`, `:log_level` — the
      command, see `DSPyBridge.Command`.
    * `:name` — GenServer name.
    * `:ready_timeout` — ms to wait for `ready` and the replay (15,000).
    * `:max_in_flight`, `:max_queue`, `:overflow` (`:queue` or `:error`).
    * `:worker_timeout_margin` — ms added to a request's timeout for the
      worker's own `timeout_ms` (1,000).
    * `:shutdown_grace` — ms the worker may take to drain on stop (2,000).
    * `:kill_after` — ms to wait beyond the grace for the process to exit
      before sending SIGKILL (2,000).
    * `:init_commands` — `[{command, args}]` sent after `ready`, before any
      replay (e.g. the pool's default LM).
    * `:replay` — a 0-arity function returning a list of batches of
      `{command, args}` to send before serving.
    * `:on_event` — a function called with every `DSPyBridge.Event`, or a
      pid sent `{:dspy_bridge_event, event}`.
    * `:pool` — set by the pool: its name and the worker's index (for
      events and telemetry), and the callbacks through which the worker
      tells its pool what happens, run in the worker process: `:on_start`
      (0-arity), `:on_status` (pid, OS pid, status), `:on_down` (pid),
      `:on_record` (record, reply) for a successful recorded request,
      `:serves_session?` (session id) and `:on_session_evicted` (session id).
      A worker without `:pool` calls nothing.
  """

  use GenServer
  require Logger

  alias DSPyBridge.{Command, Error, Event, MsgPack, Protocol}
  alias DSPyBridge.Worker.Replay

  @default_timeout 30_000
  # answered at once by the worker, so never held back by the in-flight bound
  @unbounded ["ping", "get_stats", "cancel", "shutdown"]
  @call_margin 5_000

  @typedoc "A worker: pid or registered name."
  @type server :: GenServer.server()

  @typedoc "Options of `request/4` (`:record` and `:load` are used by the pool)."
  @type request_opt ::
          {:timeout, timeout()}
          | {:record, term()}
          | {:load, {:atomics.atomics_ref(), non_neg_integer()}}

  @doc """
  A child spec whose `:shutdown` leaves time for the graceful stop
  (`:shutdown_grace` plus a margin for the SIGKILL fallback).
  """
  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts) do
    %{
      id: Keyword.get(opts, :id, __MODULE__),
      start: {__MODULE__, :start_link, [opts]},
      restart: :permanent,
      type: :worker,
      shutdown:
        Keyword.get(opts, :shutdown_grace, 2_000) + Keyword.get(opts, :kill_after, 2_000) + 4_000
    }
  end

  @doc "Starts a worker GenServer linked to the caller; see the module doc for options."
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    case Keyword.fetch(opts, :name) do
      {:ok, name} -> GenServer.start_link(__MODULE__, opts, name: name)
      :error -> GenServer.start_link(__MODULE__, opts)
    end
  end

  @doc """
  Sends `command` with `args` and waits for its response.

  Returns `{:ok, result}` (the decoded `result`, string keys) or
  `{:error, %DSPyBridge.Error{}}`. Options: `:timeout` in ms (default
  #{@default_timeout}) or `:infinity`.
  """
  @spec request(server(), String.t(), map(), [request_opt()]) ::
          {:ok, term()} | {:error, Error.t()}
  def request(server, command, args \\ %{}, opts \\ []) do
    timeout = Keyword.get(opts, :timeout, @default_timeout)
    load = Keyword.get(opts, :load)

    with {:ok, msg} <- request_message(command, args, opts, load) do
      call_timeout = if timeout == :infinity, do: :infinity, else: timeout + @call_margin
      # The pool's load counter counts the call from now; the worker releases
      # it when it answers, whatever the outcome.
      acquire(load)

      try do
        GenServer.call(server, msg, call_timeout)
      catch
        :exit, {:timeout, _} ->
          {:error, Error.new(:timeout, "worker did not answer in #{timeout} ms")}

        :exit, {:noproc, _} ->
          # never delivered: safe for the pool to retry on a restarted worker
          release(load)

          {:error,
           Error.new(:worker_exited, "worker not running", details: %{"reason" => "noproc"})}

        :exit, {reason, _} ->
          {:error, Error.new(:worker_exited, "worker not available: #{inspect(reason)}")}
      end
    end
  end

  @doc """
  Sends a request without waiting: returns `{:ok, request_id}` to pass to
  `await_response/2` (the caller must be the process that awaits). Like
  `GenServer.send_request/2`, the request is ordered with the caller's
  later messages to the worker: once a later `info/1` returns, this request
  is in flight (or queued). Options: `:timeout` (default #{@default_timeout} ms).
  """
  @spec send_request(server(), String.t(), map(), [request_opt()]) ::
          {:ok, term()} | {:error, Error.t()}
  def send_request(server, command, args \\ %{}, opts \\ []) do
    with {:ok, msg} <- request_message(command, args, opts, nil) do
      {:ok, :gen_server.send_request(server, msg)}
    end
  end

  # The message request/4 and send_request/4 hand to the worker process. The
  # args are encoded and measured here, in the caller, so the worker process
  # only compares numbers.
  defp request_message(command, args, opts, load) do
    with {:ok, encoded} <- Protocol.encode_args(args) do
      timeout = Keyword.get(opts, :timeout, @default_timeout)
      {:ok, {:request, to_string(command), encoded, timeout, Keyword.get(opts, :record), load}}
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

  @doc "Waits until the worker has sent `ready` and finished its replay."
  @spec await_ready(server(), timeout()) :: :ok | {:error, Error.t()}
  def await_ready(server, timeout \\ 30_000) do
    GenServer.call(server, :await_ready, timeout)
  catch
    :exit, {reason, _} ->
      {:error, Error.new(:worker_exited, "worker not ready: #{inspect(reason)}")}
  end

  @doc """
  Client-side information about the worker (atom keys): `:status`,
  `:os_pid`, `:worker_id`, `:in_flight`, `:queued`, `:max_in_flight`,
  `:max_frame_bytes` (the worker's announced frame limit), `:uptime_ms`,
  the counters `:requests`, `:timeouts`, `:cancels_sent`,
  `:late_replies_dropped`, `:overloaded`, `:limit_exceeded` (requests
  refused before sending) and `:unexpected_frames` (frames from the worker
  that were undecodable, malformed, or answered no pending request), and the
  `ready` event as `:ready`.
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

  # -- GenServer ----------------------------------------------------------------

  @impl true
  def init(opts) do
    Process.flag(:trap_exit, true)
    cmd = Command.resolve(opts)

    port_opts =
      [:binary, {:packet, 4}, :exit_status, :use_stdio, args: cmd.args, env: cmd.env] ++
        if(cmd.cd, do: [cd: cmd.cd], else: [])

    try do
      Port.open({:spawn_executable, cmd.python}, port_opts)
    rescue
      e -> {:stop, {:spawn_failed, cmd.python, Exception.message(e)}}
    else
      port ->
        {:os_pid, os_pid} = Port.info(port, :os_pid)
        ready_timeout = Keyword.get(opts, :ready_timeout, 15_000)

        state = %{
          port: port,
          os_pid: os_pid,
          status: :starting,
          pool: Keyword.get(opts, :pool),
          on_event: Keyword.get(opts, :on_event),
          init_commands: Keyword.get(opts, :init_commands, []),
          replay: Keyword.get(opts, :replay),
          max_in_flight: Keyword.get(opts, :max_in_flight, 200),
          max_queue: Keyword.get(opts, :max_queue, 10_000),
          overflow: Keyword.get(opts, :overflow, :queue),
          margin: Keyword.get(opts, :worker_timeout_margin, 1_000),
          grace: Keyword.get(opts, :shutdown_grace, 2_000),
          kill_after: Keyword.get(opts, :kill_after, 2_000),
          ready_timer: Process.send_after(self(), :ready_timeout, ready_timeout),
          ready: nil,
          ready_waiters: [],
          limits: Protocol.default_limits(),
          next_id: 0,
          # ref => request; ids maps a wire id to its ref while in flight
          reqs: %{},
          ids: %{},
          queue: :queue.new(),
          queued: 0,
          # wire ids of timed-out requests still running in the worker
          abandoned: %{},
          # wire id => :replay | :cancel | :shutdown
          internal: %{},
          replay_state: nil,
          started_at: System.monotonic_time(:millisecond),
          counters: %{
            requests: 0,
            timeouts: 0,
            cancels_sent: 0,
            late_replies_dropped: 0,
            overloaded: 0,
            limit_exceeded: 0,
            unexpected_frames: 0
          }
        }

        hook(state, :on_start, [])

        register(state)
        {:ok, state}
    end
  end

  @impl true
  def handle_call({:request, command, _, _, _, load}, _from, %{status: :stopping} = state) do
    release(load)

    {:reply, {:error, Error.new(:shutting_down, "worker is stopping; #{command} not sent")},
     state}
  end

  def handle_call({:request, command, {args_bin, shape}, timeout, record, load}, from, state) do
    ref = make_ref()

    timer =
      if timeout == :infinity,
        do: nil,
        else: :erlang.start_timer(timeout, self(), {:req_timeout, ref})

    deadline =
      if timeout == :infinity, do: :infinity, else: System.monotonic_time(:millisecond) + timeout

    req = %{
      from: from,
      command: command,
      args: args_bin,
      shape: shape,
      timer: timer,
      deadline: deadline,
      record: record,
      load: load,
      started: System.monotonic_time(),
      id: nil
    }

    state = bump(state, :requests)

    cond do
      state.status == :ready and
          (map_size(state.ids) < state.max_in_flight or command in @unbounded) ->
        {:noreply, dispatch(state, ref, req)}

      state.status == :ready and state.overflow == :error ->
        cancel_timer(timer)
        release(load)
        {:reply, {:error, overloaded(state)}, bump(state, :overloaded)}

      state.queued >= state.max_queue ->
        cancel_timer(timer)
        release(load)
        {:reply, {:error, overloaded(state)}, bump(state, :overloaded)}

      true ->
        state = %{
          state
          | reqs: Map.put(state.reqs, ref, req),
            queue: :queue.in(ref, state.queue),
            queued: state.queued + 1
        }

        {:noreply, state}
    end
  end

  def handle_call(:await_ready, _from, %{status: :ready} = state), do: {:reply, :ok, state}

  def handle_call(:await_ready, from, state),
    do: {:noreply, %{state | ready_waiters: [from | state.ready_waiters]}}

  def handle_call(:os_pid, _from, state), do: {:reply, state.os_pid, state}

  def handle_call(:info, _from, state) do
    info =
      Map.merge(state.counters, %{
        status: state.status,
        os_pid: state.os_pid,
        worker_id: state.ready && state.ready["worker_id"],
        in_flight: map_size(state.ids),
        queued: state.queued,
        max_in_flight: state.max_in_flight,
        max_frame_bytes: state.limits.max_frame_bytes,
        uptime_ms: System.monotonic_time(:millisecond) - state.started_at,
        ready: state.ready
      })

    {:reply, info, state}
  end

  @impl true
  def handle_cast(:prepare_stop, %{status: status} = state) when status in [:exited, :stopping],
    do: {:noreply, state}

  def handle_cast(:prepare_stop, state) do
    state = sent_state(send_internal(state, "shutdown", %{"grace_ms" => state.grace}, :shutdown))
    {:noreply, %{state | status: :stopping}}
  end

  @impl true
  def handle_info({port, {:data, frame}}, %{port: port} = state) do
    case Protocol.decode(frame) do
      {:event, name, event} -> handle_event(name, event, state)
      {:response, id, response} -> {:noreply, handle_response(id, response, state)}
      {:unexpected, what} -> {:noreply, unexpected(state, what)}
    end
  end

  def handle_info({port, {:exit_status, status}}, %{port: port, status: :stopping} = state) do
    Logger.debug("dspy_bridge worker #{state.os_pid} stopped with status #{status}")
    state = fail_all(%{state | status: :exited}, "worker stopped")
    {:stop, :shutdown, state}
  end

  def handle_info({port, {:exit_status, status}}, %{port: port} = state) do
    in_flight = map_size(state.reqs)

    Logger.error(
      "dspy_bridge worker #{state.os_pid} exited with status #{status}; " <>
        "failing #{in_flight} pending request(s)"
    )

    state = fail_all(%{state | status: :exited}, "worker exited with status #{status}")

    emit(state, :client, "worker_exited", %{"exit_status" => status, "in_flight" => in_flight})
    {:stop, {:shutdown, {:worker_exited, status}}, state}
  end

  def handle_info({:timeout, _tref, {:req_timeout, ref}}, state) do
    case Map.pop(state.reqs, ref) do
      {nil, _} ->
        {:noreply, state}

      {%{id: nil} = req, reqs} ->
        # still queued: lazily skipped when dequeued
        reply(req, {:error, timeout_error(req)})
        {:noreply, bump(%{state | reqs: reqs, queued: state.queued - 1}, :timeouts)}

      {%{id: id} = req, reqs} ->
        reply(req, {:error, timeout_error(req)})

        state = %{
          state
          | reqs: reqs,
            ids: Map.delete(state.ids, id),
            abandoned: Map.put(state.abandoned, id, req.command)
        }

        state = state |> bump(:timeouts) |> send_cancel(id) |> drain_queue()
        {:noreply, state}
    end
  end

  def handle_info(:ready_timeout, %{status: status} = state)
      when status in [:starting, :replaying] do
    Logger.error("dspy_bridge worker #{state.os_pid} not ready in time (#{status}); killing it")
    kill_os_process(state)
    state = fail_all(%{state | status: :exited}, "worker did not become ready in time")
    {:stop, {:shutdown, :ready_timeout}, state}
  end

  def handle_info(:ready_timeout, state), do: {:noreply, state}
  # A write to a dead process can close the port with :epipe and no exit
  # status: that is the worker's death too. The process is killed in case it
  # only closed its stdin.
  def handle_info({:EXIT, port, reason}, %{port: port, status: status} = state)
      when status != :exited do
    in_flight = map_size(state.reqs)

    Logger.error(
      "dspy_bridge worker #{state.os_pid}: port closed (#{inspect(reason)}); " <>
        "failing #{in_flight} pending request(s)"
    )

    kill_os_process(state)
    state = fail_all(%{state | status: :exited}, "worker port closed: #{inspect(reason)}")
    emit(state, :client, "worker_exited", %{"exit_status" => nil, "in_flight" => in_flight})
    {:stop, {:shutdown, {:worker_exited, reason}}, state}
  end

  def handle_info({:EXIT, port, _reason}, %{port: port} = state), do: {:noreply, state}
  def handle_info({:EXIT, _pid, reason}, state), do: {:stop, reason, state}
  def handle_info(_msg, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, %{status: :exited} = state), do: unregister(state)

  def terminate(reason, state) do
    # Ask the worker to stop, keep answering callers while it drains, and
    # make sure the OS process is gone before returning.
    state =
      if state.status == :stopping,
        do: state,
        else:
          sent_state(send_internal(state, "shutdown", %{"grace_ms" => state.grace}, :shutdown))

    deadline = System.monotonic_time(:millisecond) + state.grace + state.kill_after

    state =
      case drain_until_exit(state, deadline) do
        {:exited, state} ->
          state

        {:alive, state} ->
          Logger.warning(
            "dspy_bridge worker #{state.os_pid} still running after shutdown grace; sending SIGKILL"
          )

          kill_os_process(state)

          case drain_until_exit(state, System.monotonic_time(:millisecond) + 3_000) do
            {_, state} -> state
          end
      end

    fail_all(state, "worker stopped (#{inspect(reason)})")
    unregister(state)
  end

  # -- internals ------------------------------------------------------------------

  defp drain_until_exit(%{port: port} = state, deadline) do
    wait = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {^port, {:exit_status, _}} ->
        {:exited, state}

      {:EXIT, ^port, _} ->
        kill_os_process(state)
        {:exited, state}

      {^port, {:data, frame}} ->
        state =
          case Protocol.decode(frame) do
            {:response, id, response} -> handle_response(id, response, state)
            _ -> state
          end

        drain_until_exit(state, deadline)
    after
      wait -> {:alive, state}
    end
  end

  defp kill_os_process(%{os_pid: os_pid}) do
    System.cmd("kill", ["-9", Integer.to_string(os_pid)], stderr_to_stdout: true)
  rescue
    _ -> :ok
  end

  # Returns a GenServer answer: {:noreply, state} or {:stop, reason, state}.
  defp handle_event("ready", event, %{status: :starting} = state) do
    if event["protocol_version"] != 1 do
      Logger.warning(
        "dspy_bridge worker #{state.os_pid} speaks protocol #{inspect(event["protocol_version"])}, expected 1"
      )
    end

    Logger.info(
      "dspy_bridge worker #{state.os_pid} ready (worker_id=#{text(event["worker_id"])}" <>
        if(state.pool, do: ", pool=#{inspect(state.pool.name)}[#{state.pool.index}])", else: ")")
    )

    state = %{
      state
      | ready: event,
        status: :replaying,
        limits: Protocol.limits_from_ready(event)
    }

    emit(state, :worker, "ready", event)
    {:noreply, start_replay(state)}
  end

  defp handle_event("ready", _event, state) do
    # `ready` is sent once, first: another one changes nothing
    {:noreply, unexpected(state, "a ready event while #{state.status}")}
  end

  defp handle_event("engine_failed", event, state) do
    error = Error.from_wire(event["error"])

    Logger.error(
      "dspy_bridge worker #{state.os_pid}: the DSPy engine failed to load: #{error.message}" <>
        if(state.status == :stopping, do: "", else: "; stopping the worker so it is replaced")
    )

    emit(state, :worker, "engine_failed", event)

    if state.status == :stopping do
      {:noreply, state}
    else
      # Out of the pool's routing table at once: calls that arrive while this
      # process drains wait for its replacement instead. terminate/2 lets the
      # worker answer what is in flight, then fails the rest with :worker_exited.
      unregister(state)
      {:stop, {:shutdown, {:engine_failed, error.message}}, state}
    end
  end

  defp handle_event("session_evicted", event, state) do
    session = event["session_id"]

    cond do
      not is_binary(session) ->
        {:noreply, unexpected(state, "session_evicted without a session_id: #{inspect(event)}")}

      state.pool != nil and not state.pool.serves_session?.(session) ->
        # not a session of this worker: its records belong to another one
        {:noreply,
         unexpected(state, "session_evicted for #{inspect(session)}, a session it does not serve")}

      true ->
        Logger.info("dspy_bridge worker #{state.os_pid}: session #{inspect(session)} evicted")
        hook(state, :on_session_evicted, [session])
        emit(state, :worker, "session_evicted", event)
        {:noreply, state}
    end
  end

  defp handle_event(name, event, state) do
    case name do
      "progress" ->
        Logger.debug("dspy_bridge worker #{state.os_pid} progress: #{inspect(event)}")

      _ ->
        Logger.info(
          "dspy_bridge worker #{state.os_pid} event #{inspect(name)}: #{inspect(event, limit: 20)}"
        )
    end

    emit(state, :worker, name, event)
    {:noreply, state}
  end

  defp unexpected(state, what) do
    Logger.warning("dspy_bridge worker #{state.os_pid} sent #{what}")
    bump(state, :unexpected_frames)
  end

  defp text(s) when is_binary(s), do: s
  defp text(other), do: inspect(other, limit: 20)

  defp handle_response(id, response, state) do
    cond do
      Map.has_key?(state.ids, id) ->
        {ref, ids} = Map.pop(state.ids, id)
        {req, reqs} = Map.pop(state.reqs, ref)
        cancel_timer(req.timer)
        reply = Protocol.to_reply(response)

        if req.record != nil and match?({:ok, _}, reply),
          do: hook(state, :on_record, [req.record, reply])

        reply(req, reply)
        request_telemetry(state, req, reply)
        drain_queue(%{state | ids: ids, reqs: reqs})

      Map.has_key?(state.internal, id) ->
        {tag, internal} = Map.pop(state.internal, id)
        handle_internal(tag, id, response, %{state | internal: internal})

      Map.has_key?(state.abandoned, id) ->
        {command, abandoned} = Map.pop(state.abandoned, id)
        outcome = Protocol.outcome(response)

        Logger.debug(
          "dspy_bridge worker #{state.os_pid}: dropped late #{outcome} reply for timed-out request #{inspect(id)} (#{command})"
        )

        emit(state, :client, "late_reply_dropped", %{
          "id" => id,
          "command" => command,
          "outcome" => outcome
        })

        bump(%{state | abandoned: abandoned}, :late_replies_dropped)

      true ->
        # e.g. an `invalid_frame` answer with `id: nil`: it names no request
        unexpected(
          state,
          "an answer to no pending request (id #{inspect(id)}): #{inspect(response, limit: 10)}"
        )
    end
  end

  defp handle_internal(:replay, id, response, state) do
    {result, replay} = Replay.answered(state.replay_state, id, response)

    with {:failed, command, error} <- result do
      Logger.warning(
        "dspy_bridge worker #{state.os_pid}: replaying #{command} failed: " <>
          inspect(error, limit: 10)
      )
    end

    replay_step(%{state | replay_state: replay})
  end

  defp handle_internal(tag, _id, response, state) do
    if match?(%{"success" => false}, response) do
      Logger.debug(
        "dspy_bridge worker #{state.os_pid}: #{inspect(tag)} answered #{inspect(response)}"
      )
    end

    state
  end

  defp start_replay(state) do
    batches =
      case state.replay do
        nil -> []
        fun -> fun.()
      end

    replay = Replay.new(state.init_commands, batches, System.monotonic_time(:millisecond))
    replay_step(%{state | replay_state: replay})
  end

  defp replay_step(state) do
    case Replay.next(state.replay_state) do
      :wait ->
        state

      :done ->
        summary = Replay.summary(state.replay_state, System.monotonic_time(:millisecond))

        if summary["commands"] > 0 do
          Logger.info(
            "dspy_bridge worker #{state.os_pid}: replayed #{summary["commands"]} command(s) in #{summary["duration_ms"]} ms" <>
              if(summary["failed"] > 0, do: " (#{summary["failed"]} failed)", else: "")
          )

          emit(state, :client, "replayed", summary)
        end

        become_ready(%{state | replay_state: nil})

      {:send, batch, replay} ->
        batch
        |> Enum.reduce(%{state | replay_state: replay}, fn {command, args}, state ->
          case send_internal(state, command, args, :replay) do
            {:ok, id, state} ->
              %{state | replay_state: Replay.sent(state.replay_state, id, command)}

            {:error, state} ->
              Logger.warning("dspy_bridge worker #{state.os_pid}: could not replay #{command}")
              %{state | replay_state: Replay.not_sent(state.replay_state)}
          end
        end)
        |> replay_step()
    end
  end

  defp become_ready(state) do
    Process.cancel_timer(state.ready_timer)
    Enum.each(state.ready_waiters, &GenServer.reply(&1, :ok))
    state = %{state | status: :ready, ready_waiters: []}
    register(state)
    drain_queue(state)
  end

  defp drain_queue(%{status: :ready} = state) do
    if state.queued > 0 and map_size(state.ids) < state.max_in_flight do
      {{:value, ref}, queue} = :queue.out(state.queue)
      state = %{state | queue: queue}

      case Map.fetch(state.reqs, ref) do
        {:ok, %{id: nil} = req} ->
          drain_queue(dispatch(%{state | queued: state.queued - 1}, ref, req))

        _ ->
          # timed out while queued (already answered and counted)
          drain_queue(state)
      end
    else
      if state.queued == 0, do: %{state | queue: :queue.new()}, else: state
    end
  end

  defp drain_queue(state), do: state

  defp dispatch(state, ref, req) do
    id = state.next_id

    timeout_ms =
      case req.deadline do
        :infinity -> nil
        deadline -> max(deadline - System.monotonic_time(:millisecond), 1) + state.margin
      end

    case Protocol.encode_request(state.limits, id, req.command, {req.args, req.shape}, timeout_ms) do
      {:ok, frame} ->
        # If the OS process just died the port may be closed already; the
        # request then stays pending and fails with :worker_exited on the
        # exit status.
        port_command(state.port, frame)

        %{
          state
          | next_id: id + 1,
            reqs: Map.put(state.reqs, ref, %{req | id: id}),
            ids: Map.put(state.ids, id, ref)
        }

      {:error, error} ->
        # The worker would answer `invalid_frame` with no id (it cannot read
        # the frame), which no caller could be matched with: refuse it here.
        cancel_timer(req.timer)
        reply = {:error, error}
        reply(req, reply)
        request_telemetry(state, req, reply)
        bump(%{state | reqs: Map.delete(state.reqs, ref)}, :limit_exceeded)
    end
  end

  # Commands of the client's own (init commands, replay, cancel, shutdown).
  # One that cannot be sent leaves the state as it was (the replay counts it
  # as failed).
  defp send_internal(state, command, args, tag) do
    id = state.next_id
    encoded = {MsgPack.encode!(args), Protocol.shape(args)}

    case Protocol.encode_request(state.limits, id, command, encoded, nil) do
      {:ok, frame} ->
        port_command(state.port, frame)
        {:ok, id, %{state | next_id: id + 1, internal: Map.put(state.internal, id, tag)}}

      {:error, error} ->
        Logger.error("dspy_bridge worker #{state.os_pid}: #{command} not sent: #{error.message}")
        {:error, state}
    end
  rescue
    ArgumentError -> {:error, state}
  end

  defp sent_state({:ok, _id, state}), do: state
  defp sent_state({:error, state}), do: state

  defp port_command(port, data) do
    Port.command(port, data)
  rescue
    ArgumentError -> false
  end

  defp send_cancel(state, id) do
    state
    |> send_internal("cancel", %{"request_id" => id}, :cancel)
    |> sent_state()
    |> bump(:cancels_sent)
  end

  defp request_telemetry(state, req, reply) do
    outcome =
      case reply do
        {:ok, _} -> :ok
        {:error, %Error{type: type}} -> type
      end

    DSPyBridge.Telemetry.execute(
      [:dspy_bridge, :request, :stop],
      %{duration: System.monotonic_time() - req.started},
      %{
        command: req.command,
        outcome: outcome,
        pool: state.pool && state.pool.name,
        worker: state.pool && state.pool.index
      }
    )
  end

  defp fail_all(state, message) do
    error = Error.new(:worker_exited, message)

    for {_ref, req} <- state.reqs do
      cancel_timer(req.timer)
      reply(req, {:error, error})
    end

    Enum.each(state.ready_waiters, &GenServer.reply(&1, {:error, error}))

    %{state | reqs: %{}, ids: %{}, queue: :queue.new(), queued: 0, ready_waiters: []}
  end

  defp timeout_error(req) do
    Error.new(:timeout, "#{req.command} did not complete within its timeout; cancelled")
  end

  defp overloaded(state) do
    Error.new(
      :overloaded,
      "worker #{state.os_pid} has #{map_size(state.ids)} requests in flight and #{state.queued} queued",
      details: %{"in_flight" => map_size(state.ids), "queued" => state.queued}
    )
  end

  defp cancel_timer(nil), do: :ok
  defp cancel_timer(timer), do: :erlang.cancel_timer(timer, async: true, info: false)

  defp bump(state, key), do: %{state | counters: Map.update!(state.counters, key, &(&1 + 1))}

  defp reply(req, reply) do
    GenServer.reply(req.from, reply)
    release(req.load)
  end

  defp acquire(nil), do: :ok
  defp acquire({load, index}), do: :atomics.add(load, index + 1, 1)

  defp release(nil), do: :ok
  defp release({load, index}), do: :atomics.sub(load, index + 1, 1)

  defp register(state), do: hook(state, :on_status, [self(), state.os_pid, state.status])
  defp unregister(state), do: hook(state, :on_down, [self()])

  # The pool's callbacks (see the `:pool` option): a standalone worker has none.
  defp hook(%{pool: nil}, _name, _args), do: :ok
  defp hook(%{pool: pool}, name, args), do: apply(Map.fetch!(pool, name), args)

  defp emit(state, source, name, data) do
    event = %Event{
      name: name,
      source: source,
      data: data,
      pool: state.pool && state.pool.name,
      worker: state.pool && state.pool.index,
      os_pid: state.os_pid
    }

    case state.on_event do
      nil -> :ok
      fun when is_function(fun, 1) -> safe_call(fun, event)
      pid when is_pid(pid) -> send(pid, {:dspy_bridge_event, event})
    end

    DSPyBridge.Telemetry.execute([:dspy_bridge, :event], %{count: 1}, %{event: event})
  end

  defp safe_call(fun, event) do
    fun.(event)
  catch
    kind, reason ->
      Logger.warning("dspy_bridge event handler failed: #{Exception.format(kind, reason)}")
  end
end
