defmodule DSPyBridge.Pool do
  @moduledoc """
  A supervised pool of Python workers. Put it in your supervision tree:

      children = [
        {DSPyBridge.Pool,
         name: MyApp.DSPy,
         size: 4,
         default_lm: [model: "openai/gpt-4o-mini", api_key_env: "OPENAI_API_KEY"]}
      ]

  and call it through `DSPyBridge` (`DSPyBridge.execute(MyApp.DSPy, ...)`).

  ## Behaviour

    * **Concurrent start.** Workers are started concurrently; by default
      `start_link/1` returns once all of them have sent `ready` (see
      `:await_ready`).
    * **Session affinity.** A request with a session goes to worker
      `:erlang.phash2(session_id, size)`, where that session's LM and
      programs live. Requests without a session go to the least-loaded
      ready worker. Mutations of the default (no) session — `configure_lm`,
      `create_program`, ... — are sent to every worker.
    * **Backpressure.** Each worker has at most `:max_in_flight` requests in
      flight; more wait in a bounded queue (`:max_queue`) up to their
      timeout, or fail at once with `:overloaded` when `overflow: :error`.
    * **No lost sessions.** Every successful `configure_lm`,
      `configure_cache`, `register_tools`, `create_program` and
      `import_program` is recorded in the pool's ETS table
      (`DSPyBridge.Pool.Store`), host functions with their implementations,
      and `delete_program` / `delete_tool` / `end_session` remove records;
      a successful `DSPyBridge.compile/4` (or `checkpoint_program/3`)
      records the program as exported then, so it comes back compiled. When a worker restarts (the supervisor
      restarts it after its OS process dies), the records of the sessions
      that hash to it are replayed into the new process before it takes any
      traffic; callers that arrive meanwhile wait. A worker whose DSPy
      engine fails to load (`engine_failed`) is stopped and restarted the
      same way.
    * **Resume.** `request/5` with `resume: n` sends a request again, up
      to `n` times, when its worker dies with it in flight: on the
      restarted worker, once its replay is done (`DSPyBridge.compile/4`'s
      `resume: true`, for a checkpointed compile).
    * **Host functions.** A worker's `callback` runs the registered
      function in a task under the pool's `Task.Supervisor`
      (`<name>.Tasks`), never in the worker process (see
      `DSPyBridge.register_tools/3`).
    * **Stopping.** All workers are asked to shut down at once, then each is
      waited for; none outlives the pool (see `DSPyBridge.Worker`).

  ## Options

  Validated when the pool starts (an unknown option or a value of the wrong
  type raises `ArgumentError`; see `DSPyBridge.Options`):

  #{DSPyBridge.Options.table(:pool)}
  The worker options from `:python` on are passed on to every worker (see
  `DSPyBridge.Worker`).
  """

  use Supervisor
  require Logger

  alias DSPyBridge.{Args, Cluster, Error, Event, Options, Worker}
  alias DSPyBridge.Pool.{Router, Stopper, Store}

  @worker_opts Options.forwarded()

  @typedoc "A pool name."
  @type t :: atom()

  @doc """
  A child spec for a supervisor (`id` is the pool name). Validates the
  options (see the module doc).
  """
  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts) do
    opts = validate!(opts)

    %{
      id: Keyword.fetch!(opts, :name),
      start: {__MODULE__, :start_link, [opts]},
      type: :supervisor,
      shutdown: :infinity
    }
  end

  @doc """
  Starts the pool supervisor, linked to the caller; see the module doc.
  Raises `ArgumentError` for an unknown option or a value of the wrong type.
  When a worker cannot start (see "When a worker cannot start" in the
  `Worker` module doc), returns `{:error, %Error{}}` naming the interpreter,
  its first stderr lines and the setting to change.
  """
  @spec start_link(keyword()) :: Supervisor.on_start() | {:error, Error.t()}
  def start_link(opts) do
    opts = validate!(opts)

    case Supervisor.start_link(__MODULE__, opts, name: Keyword.fetch!(opts, :name)) do
      {:error, reason} -> {:error, start_error(reason) || reason}
      other -> other
    end
  end

  defp validate!(opts) do
    opts = Options.validate!(opts, :pool)
    transcript = opts[:transcript]

    if transcript && opts[:size] > 1 && not String.contains?(transcript, "{worker}") do
      raise ArgumentError,
            "transcript: #{inspect(transcript)} would interleave #{opts[:size]} workers' " <>
              "frames in one file: put {worker} in the path (one transcript per worker)"
    end

    opts
  end

  # The first worker start failure in a supervisor's start error, if any.
  defp start_error(%Error{details: %{"reason" => "start_failed"}} = error), do: error

  defp start_error(reason) when is_tuple(reason),
    do: reason |> Tuple.to_list() |> start_error()

  defp start_error(reasons) when is_list(reasons), do: Enum.find_value(reasons, &start_error/1)
  defp start_error(_), do: nil

  @doc "Stops the pool and all its workers (their OS processes are gone when it returns)."
  @spec stop(t(), timeout()) :: :ok
  def stop(pool, timeout \\ :infinity), do: Supervisor.stop(pool, :normal, timeout)

  @impl true
  def init(opts) do
    name = Keyword.fetch!(opts, :name)
    size = Keyword.fetch!(opts, :size)
    table = Store.new(name)
    registry = Module.concat(name, Subscribers)
    tasks = Module.concat(name, Tasks)
    load = :atomics.new(size, signed: true)
    user_on_event = opts[:on_event]
    cluster? = Keyword.fetch!(opts, :cluster)

    on_event = fn event -> dispatch_event(registry, user_on_event, event) end

    init_commands =
      case opts[:default_lm] do
        nil -> []
        lm -> [{"configure_lm", Args.lm_args(lm)}]
      end

    Store.put_config(table, %{
      name: name,
      table: table,
      size: size,
      load: load,
      registry: registry,
      tasks: tasks,
      cluster: cluster?,
      started_at: System.system_time(:millisecond)
    })

    worker_opts = Keyword.take(opts, @worker_opts)

    workers =
      for index <- 0..(size - 1) do
        owns? = Cluster.owns_fun(name, index, size, cluster?)

        opts =
          worker_opts ++
            [
              id: {:worker, index},
              pool: worker_hooks(name, table, index, owns?, load, tasks, cluster?),
              on_event: on_event,
              init_commands: init_commands,
              replay: fn -> Store.replay_batches(table, &(&1 == nil or owns?.(&1))) end
            ]

        Worker.child_spec(opts)
      end

    ready_timeout = Keyword.fetch!(opts, :ready_timeout)

    extra =
      if Keyword.fetch!(opts, :await_ready),
        do: [
          %{
            id: :await_ready,
            start: {__MODULE__, :__await_ready__, [table, size, ready_timeout + 1_000]},
            restart: :temporary
          }
        ],
        else: []

    stopper = %{
      id: :stopper,
      start: {Stopper, :start_link, [table, size]},
      restart: :permanent,
      shutdown: 5_000
    }

    # :pg monitors its members instead of linking to them, so subscribers do
    # not die with the pool.
    subscribers = %{id: :subscribers, start: {:pg, :start_link, [registry]}}
    # host functions run here, never in a worker process; started before the
    # workers and stopped after them
    task_supervisor = {Task.Supervisor, name: tasks}
    # last, so it is stopped first: the cluster stops routing here before the workers go
    member = if cluster?, do: [{Cluster.Member, pool: name, table: table, size: size}], else: []

    children = [subscribers, task_supervisor] ++ workers ++ extra ++ [stopper] ++ member

    Supervisor.init(children,
      strategy: :one_for_one,
      max_restarts: Keyword.fetch!(opts, :max_restarts),
      max_seconds: Keyword.fetch!(opts, :max_seconds)
    )
  end

  # What a worker tells its pool, as callbacks (the worker knows nothing of
  # the pool's table): it runs them in its own process.
  defp worker_hooks(name, table, index, owns?, load, tasks, cluster?) do
    %{
      name: name,
      index: index,
      tasks: tasks,
      on_start: fn ->
        Store.note_start(table, index)
        # calls counted against the previous process were answered or failed
        :atomics.put(load, index + 1, 0)
      end,
      on_status: fn pid, os_pid, status ->
        Store.register_worker(table, index, pid, os_pid, status)
      end,
      on_down: fn pid -> Store.unregister_worker(table, index, pid) end,
      on_record: fn record, reply -> Cluster.record(name, table, cluster?, record, reply) end,
      serves_session?: owns?,
      on_session_evicted: fn session -> Store.forget_session(table, session) end,
      host_function: fn session, function -> Store.host_function(table, session, function) end
    }
  end

  @doc false
  # Runs in the supervisor while it starts its children: blocks start_link
  # until every (concurrently booting) worker is ready, then adds no child.
  def __await_ready__(table, size, timeout) do
    results =
      0..(size - 1)
      |> Enum.map(fn index ->
        case Store.worker(table, index) do
          {pid, _, _} -> Task.async(fn -> {index, Worker.await_ready(pid, timeout)} end)
          nil -> Task.async(fn -> {index, {:error, :not_started}} end)
        end
      end)
      |> Task.await_many(:infinity)

    case Enum.reject(results, &match?({_, :ok}, &1)) do
      [] -> :ignore
      failed -> {:error, {:workers_not_ready, failed}}
    end
  end

  @doc """
  The index of the worker serving `session_id` in a pool of `size` workers.

      iex> DSPyBridge.Pool.index_for("tenant-42", 4) in 0..3
      true
  """
  @spec index_for(String.t(), pos_integer()) :: non_neg_integer()
  defdelegate index_for(session_id, size), to: Router

  @doc "The worker pid and OS pid currently serving `session_id` (`nil` while it restarts)."
  @spec worker_for(t(), String.t()) :: {pid(), non_neg_integer()} | nil
  def worker_for(pool, session_id) do
    %{size: size, table: table} = Store.config(pool)

    case Store.worker(table, index_for(session_id, size)) do
      {pid, os_pid, _} -> {pid, os_pid}
      nil -> nil
    end
  end

  @doc "`[{index, pid, os_pid, status}]` of the pool's workers."
  @spec workers(t()) :: [{non_neg_integer(), pid() | nil, non_neg_integer() | nil, atom()}]
  def workers(pool) do
    %{size: size, table: table} = Store.config(pool)

    for index <- 0..(size - 1) do
      case Store.worker(table, index) do
        {pid, os_pid, status} -> {index, pid, os_pid, status}
        nil -> {index, nil, nil, :down}
      end
    end
  end

  @doc """
  The index of the worker a call goes to: `worker` if given, else the
  session's worker if `session` is not `nil`, else the least-loaded ready
  worker (as `request/5` chooses).
  """
  @spec route(t(), String.t() | nil, non_neg_integer() | nil) :: non_neg_integer()
  def route(pool, session, worker \\ nil) do
    config = Store.config(pool)
    Router.route(worker, session, config.size, fn -> candidates(config) end)
  end

  @doc """
  Sends one request to the worker chosen for the call: `opts[:worker]` (an
  index) if given, else the session's worker if `session` is not `nil`,
  else the least-loaded ready worker. Waits (up to the timeout) while the
  chosen worker is restarting.

  Options:

  #{Options.table(:pool_request)}
  """
  @spec request(t(), String.t() | nil, String.t(), map(), keyword()) ::
          {:ok, term()} | {:error, Error.t()}
  def request(pool, session, command, args, opts) do
    opts = Options.validate!(opts, :pool_request)
    # a clustered pool's session lives on its owner, maybe on another node
    Cluster.request({__MODULE__, :request}, &local_request/5, [pool, session, command, args, opts])
  end

  defp local_request(pool, session, command, args, opts) do
    config = Store.config(pool)

    index = Router.route(opts[:worker], session, config.size, fn -> candidates(config) end)

    request_at(config, index, command, args, opts)
  end

  @doc """
  Sends the same request to every worker concurrently (used for the
  default session's mutations). A worker that dies meanwhile is retried
  once after its restart. `already_exists` from some workers while others
  succeed counts as success (a restarted worker may already have got the
  change by replay); from all of them it is the error it says.
  Returns the first success, or the first error.

  Options:

  #{Options.table(:broadcast)}
  """
  @spec broadcast(t(), String.t(), map(), keyword()) :: {:ok, term()} | {:error, Error.t()}
  def broadcast(pool, command, args, opts) do
    opts = Options.validate!(opts, :broadcast)
    # a clustered pool's default session is on every pool node
    args = [pool, command, args, opts]
    Cluster.broadcast({__MODULE__, :__broadcast__}, &broadcast_result/1, args)
  end

  @doc false
  # The broadcast on this node's workers (a clustered pool's: one node's part).
  def __broadcast__(pool, command, args, opts) do
    config = Store.config(pool)

    0..(config.size - 1)
    |> Enum.map(fn index ->
      Task.async(fn ->
        case request_at(config, index, command, args, opts) do
          {:error, %Error{type: :worker_exited}} ->
            case request_at(config, index, command, args, opts) do
              {:error, %Error{type: :already_exists}} -> {:ok, nil}
              other -> other
            end

          other ->
            other
        end
      end)
    end)
    |> Task.await_many(:infinity)
    |> broadcast_result()
  end

  defp broadcast_result(results) do
    exists? = &match?({:error, %Error{type: :already_exists}}, &1)
    {failed, rest} = Enum.split_with(results, &(match?({:error, _}, &1) and not exists?.(&1)))

    cond do
      failed != [] -> hd(failed)
      Enum.all?(rest, exists?) -> hd(rest)
      true -> Enum.find(rest, &match?({:ok, r} when r != nil, &1)) || {:ok, nil}
    end
  end

  # -- internals ----------------------------------------------------------------

  defp request_at(config, index, command, args, opts) do
    timeout = Keyword.fetch!(opts, :timeout)

    deadline =
      if timeout == :infinity, do: :infinity, else: System.monotonic_time(:millisecond) + timeout

    do_request_at(config, index, command, args, opts, deadline)
  end

  defp do_request_at(config, index, command, args, opts, deadline) do
    remaining = remaining(deadline)

    case Store.worker(config.table, index) do
      _ when is_integer(remaining) and remaining <= 0 ->
        {:error, Error.new(:timeout, "no worker became available for #{command} in time")}

      {pid, _, _} ->
        worker_opts =
          [timeout: remaining, record: opts[:record], load: {config.load, index}] ++
            if(opts[:listen], do: [listen: opts[:listen]], else: [])

        case Worker.request(pid, command, args, worker_opts) do
          {:error, %Error{type: :worker_exited, details: %{"reason" => "noproc"}}} ->
            backoff_and_retry(config, index, command, args, opts, deadline)

          {:error, %Error{type: :worker_exited}} = error ->
            resume(config, index, pid, command, args, opts, deadline, error)

          result ->
            result
        end

      nil ->
        backoff_and_retry(config, index, command, args, opts, deadline)
    end
  end

  defp remaining(:infinity), do: :infinity
  defp remaining(deadline), do: deadline - System.monotonic_time(:millisecond)

  # The worker is between death and restart (a few ms): the request was not
  # sent, so trying again is safe.
  defp backoff_and_retry(config, index, command, args, opts, deadline) do
    Process.sleep(5)
    do_request_at(config, index, command, args, opts, deadline)
  end

  # The worker process `pid` died with the request in flight. With resumes
  # left, the request is sent again once that process is gone (its
  # successor then holds the request until its replay is done); otherwise,
  # or once the pool is stopping, the caller gets the `error`.
  defp resume(config, index, pid, command, args, opts, deadline, error) do
    left = Keyword.get(opts, :resume, 0)

    cond do
      left <= 0 ->
        error

      not await_down(pid, deadline) ->
        {:error, Error.new(:timeout, "#{command}: its worker did not restart in time")}

      not pool_alive?(config) ->
        error

      true ->
        Logger.warning(
          "DSPyBridge.Pool #{inspect(config.name)}: worker #{index} exited during #{command}; " <>
            "sending it again on the restarted worker (#{left - 1} resume(s) left)"
        )

        opts = Keyword.put(opts, :resume, left - 1)
        do_request_at(config, index, command, args, opts, deadline)
    end
  end

  defp await_down(pid, deadline) do
    ref = Process.monitor(pid)

    receive do
      {:DOWN, ^ref, :process, ^pid, _} -> true
    after
      max(remaining(deadline), 0) ->
        Process.demonitor(ref, [:flush])
        false
    end
  end

  defp pool_alive?(config), do: Process.whereis(config.name) != nil

  defp candidates(%{size: size, load: load, table: table}) do
    for index <- 0..(size - 1) do
      ready? = match?({_, _, :ready}, Store.worker(table, index))
      {index, ready?, :atomics.get(load, index + 1)}
    end
  end

  @doc false
  def dispatch_event(registry, user_on_event, %Event{} = event) do
    if is_function(user_on_event, 1) do
      try do
        user_on_event.(event)
      catch
        kind, reason ->
          Logger.warning("DSPyBridge.Pool :on_event failed: #{Exception.format(kind, reason)}")
      end
    end

    for pid <- :pg.get_local_members(registry, :events),
        do: send(pid, {:dspy_bridge_event, event})

    :ok
  end
end
