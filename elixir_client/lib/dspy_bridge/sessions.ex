defmodule DSPyBridge.Sessions do
  @moduledoc false
  # Sessions, usage, cache, stats, events and raw requests: `DSPyBridge` delegates here.
  alias DSPyBridge.{Options, Pool}
  alias DSPyBridge.Cluster.Reads
  alias DSPyBridge.Pool.Store
  import DSPyBridge.Calls
  import DSPyBridge.Args, only: [normalize: 1]

  use DSPyBridge.ApiDocs

  @api_doc {:end_session,
            """
            Ends a session: the worker drops its programs, LM and usage, and the pool
            forgets its replay records.
            """}
  def end_session(pool, session_id, opts \\ []) when is_binary(session_id) do
    opts = opts |> Options.validate!(:end_session) |> Keyword.put(:session, session_id)

    mutate(pool, "end_session", %{}, opts, fn session, _ ->
      {:delete_session, session}
    end)
  end

  @api_doc {:get_usage,
            """
            Token usage and cost per model (string keys). With `session:` it is that
            session's usage; without, the default session's usage summed over all
            workers (on a clustered pool, every pool node's).
            """}
  def get_usage(pool, opts \\ []) do
    opts = Options.validate!(opts, :call)

    if session(opts) != nil do
      read(pool, "get_usage", %{}, opts)
    else
      # a clustered pool: summed over every pool node's workers
      Reads.on_pool_nodes(pool, {__MODULE__, :get_usage_here, [pool, opts]}, timeout(opts), fn
        parts -> {:ok, parts |> Enum.map(&elem(&1, 1)) |> Enum.reduce(%{}, &merge_sum/2)}
      end)
    end
  end

  @doc false
  # The default session's usage on this node's workers (DSPyBridge.Cluster.Reads).
  def get_usage_here(pool, opts) do
    with {:ok, results} <- all_workers(pool, "get_usage", %{}, opts) do
      {:ok, Enum.reduce(results, %{}, &merge_sum/2)}
    end
  end

  defp timeout(opts), do: Keyword.get(opts, :timeout, 30_000)

  @api_doc {:reset_usage,
            "Resets the usage counters of a session (or of the default session on every worker)."}
  def reset_usage(pool, opts \\ []) do
    opts = Options.validate!(opts, :call)
    mutate(pool, "reset_usage", %{}, opts, fn _, _ -> nil end)
  end

  @api_doc {:list_sessions,
            """
            Lists sessions: `{:ok, %{"sessions" => [%{"session_id" => ..., "programs" => n,
            "lm" => model, "created_at" => ..., "last_used" => ..., "idle_s" => ...,
            "in_flight" => ..., "worker" => index}]}}` (string keys). Without `session:`
            every worker is asked and their lists are concatenated (the default
            session appears once per worker that has it); with `session:` only that
            session is listed, by its worker. On a clustered pool, from any node:
            every pool node's workers, each entry with its `"node"` too (with
            `session:`, the owner's entry).
            """}
  def list_sessions(pool, opts \\ []) do
    opts = Options.validate!(opts, :call)
    # a clustered pool: the session's owner, or every pool node
    here = {__MODULE__, :list_sessions_here, [pool, opts]}

    if session(opts) != nil,
      do: Reads.on_owner(pool, session(opts), here, timeout(opts), &Reads.sessions/1),
      else: Reads.on_pool_nodes(pool, here, timeout(opts), &Reads.sessions/1)
  end

  @doc false
  # list_sessions/2 on this node's workers (DSPyBridge.Cluster.Reads): a
  # clustered pool's session on the worker `worker:` names (its owner).
  def list_sessions_here(pool, opts) do
    %{size: size} = config = Store.config(pool)

    indexes =
      cond do
        session(opts) == nil -> Enum.to_list(0..(size - 1))
        config.cluster and is_integer(opts[:worker]) -> [opts[:worker]]
        true -> [Pool.index_for(session(opts), size)]
      end

    with {:ok, results} <- on_workers(pool, indexes, "list_sessions", %{}, opts) do
      sessions =
        for {index, %{"sessions" => list}} <- Enum.zip(indexes, results),
            session <- list,
            do: Map.put(session, "worker", index)

      {:ok, %{"sessions" => sessions}}
    end
  end

  @api_doc {:configure_cache,
            """
            Configures DSPy's cache on every worker (`:enable_memory`, `:enable_disk`,
            `:disk_dir`, `:memory_max_entries`, `:disk_size_limit_bytes`). Recorded
            for replay.
            """}
  def configure_cache(pool, settings, opts \\ []) do
    opts = Options.validate!(opts, :configure_cache)
    args = normalize(settings)

    with {:ok, _} = ok <-
           Pool.broadcast(pool, "configure_cache", args,
             timeout: Keyword.fetch!(opts, :timeout),
             record: {:put_cache, args}
           ) do
      ok
    end
  end

  @api_doc {:ping,
            """
            Pings a worker (the session's, or the least-loaded one): `{:ok,
            %{"status" => "ok", "worker_id" => ..., "pid" => os_pid, "uptime_s" => ...,
            "in_flight" => ..., "dspy_loaded" => ...}}`.
            """}
  def ping(pool, opts \\ []), do: request(pool, "ping", %{}, Options.validate!(opts, :call))

  @api_doc {:stats,
            """
            Pool statistics, with **atom keys**:

                %{pool: MyApp.DSPy, size: 2, sessions: 3, programs: 5, tools: 2,
                  workers: [%{index: 0, status: :ready, os_pid: 1234, worker_id: "...",
                              in_flight: 0, queued: 0, requests: 10, timeouts: 0,
                              cancels_sent: 0, late_replies_dropped: 0, overloaded: 0,
                              restarts: 0, uptime_ms: 5000,
                              worker_stats: %{"requests" => ..., ...}}]}

            `worker_stats` is the worker's own `get_stats` answer (string keys), or
            `nil` if it could not be fetched (pass `worker_stats: false` to skip it).
            `sessions`/`programs`/`tools` count what the pool would replay (a
            default-session record once, however many workers hold it). On a
            clustered pool, from any node: every pool node's workers (each with
            `:node`), `size` their number, `nodes` the pool nodes.
            """}
  def stats(pool, opts \\ []) do
    opts = Options.validate!(opts, :stats)
    # a clustered pool: every pool node's, combined
    here = {__MODULE__, :stats_here, [pool, opts]}
    Reads.on_pool_nodes(pool, here, timeout(opts) + 1_000, &Reads.stats(pool, &1))
  end

  @doc false
  # stats/2 of this node's workers (DSPyBridge.Cluster.Reads).
  def stats_here(pool, opts) do
    config = Store.config(pool)
    fetch? = Keyword.fetch!(opts, :worker_stats)
    timeout = Keyword.fetch!(opts, :timeout)

    workers =
      pool
      |> Pool.workers()
      |> Enum.map(fn {index, pid, os_pid, status} ->
        Task.async(fn ->
          info =
            try do
              if pid, do: DSPyBridge.Worker.info(pid), else: %{}
            catch
              :exit, _ -> %{}
            end

          remote =
            if fetch? and status == :ready do
              case Pool.request(pool, nil, "get_stats", %{}, worker: index, timeout: timeout) do
                {:ok, s} -> s
                _ -> nil
              end
            end

          info
          |> Map.drop([:ready])
          |> Map.merge(%{index: index, os_pid: os_pid, status: Map.get(info, :status, status)})
          |> Map.put(:restarts, Store.restarts(config.table, index))
          |> Map.put(:worker_stats, remote)
        end)
      end)
      |> Task.await_many(timeout + 1_000)

    {:ok,
     Map.merge(Store.counts(config.table), %{pool: pool, size: config.size, workers: workers})}
  end

  @api_doc {:subscribe,
            """
            Subscribes the calling process to the pool's events, delivered as
            `{:dspy_bridge_event, %DSPyBridge.Event{}}` until it exits or calls
            `unsubscribe/1`. The subscriber is monitored, not linked: it does not
            die with the pool.
            """}
  def subscribe(pool) do
    scope = Store.config(pool).registry

    unless self() in :pg.get_local_members(scope, :events),
      do: :ok = :pg.join(scope, :events, self())

    :ok
  end

  @api_doc {:unsubscribe, "Stops delivering the pool's events to the calling process."}
  def unsubscribe(pool) do
    scope = Store.config(pool).registry
    if self() in :pg.get_local_members(scope, :events), do: :pg.leave(scope, :events, self())
    :ok
  end

  @api_doc {:request,
            """
            Sends any command to a worker, routed like the other calls (`:session`,
            `:worker`). The `:session` option only routes the call: put `session_id`
            in `args` yourself if the command takes one. The result is returned as
            decoded (string keys). Nothing is recorded for replay.

            This is also how a host reaches test-only commands of a worker started
            with `--enable-test-commands`, e.g. `request(pool, "sleep", %{ms: 100})`.
            """}
  def request(pool, command, args \\ %{}, opts \\ []) do
    opts = Options.validate!(opts, :call)

    Pool.request(pool, session(opts), command, normalize(args), call_opts(opts))
  end

  # Sums numbers in maps merged from several workers (usage reports); for
  # "since" (when counting started) the earliest wins.
  defp merge_sum(a, b) when is_map(a) and is_map(b) do
    Map.merge(a, b, fn
      "since", x, y when is_number(x) and is_number(y) -> min(x, y)
      "since", x, y -> x || y
      _k, x, y -> merge_sum(x, y)
    end)
  end

  defp merge_sum(a, b) when is_number(a) and is_number(b), do: a + b
  defp merge_sum(nil, b), do: b
  defp merge_sum(a, _b), do: a
end
