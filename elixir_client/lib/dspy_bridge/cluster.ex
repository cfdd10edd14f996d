defmodule DSPyBridge.Cluster do
  @moduledoc """
  One logical pool over a cluster of BEAM nodes, on Erlang distribution,
  `:pg` and `:erpc` (see `docs/cluster.md` in the repository).

  A pool started with `cluster: true` joins the `:pg` group of its name in
  the scope `DSPyBridge.Cluster` (started by the `:dspy_bridge`
  application on every node), once per worker, so the group's members are
  the worker keys `{node, index}`. Pools of the same name on all connected
  nodes form one pool:

    * a session is owned by one worker, chosen over all the keys by
      rendezvous (highest-random-weight) hashing: it stays put while the
      membership is stable, and when it changes only the sessions of a
      departed worker (or the share a joining one takes) move;
    * a call with a session goes straight to its owner: the local worker,
      or `:erpc` to `DSPyBridge.Pool.request/5` on the owner's node (one
      hop), from any node, one with no pool of its own included; a call
      without a session goes to the local pool, or to any pool node;
    * the session records (what a restarted worker is replayed) are
      replicated to every pool node, so when a node goes away the new
      owners replay its sessions from their own copy;
    * a call on a node that goes down fails at once with a retryable
      `:worker_exited` error whose `details["reason"]` is `"node_down"`.

  `whereis/2` says which worker owns a session, `stats/1` what each pool
  node holds. The reads of the whole pool (`DSPyBridge.list_sessions/2`,
  `DSPyBridge.get_usage/2` without a session, `DSPyBridge.stats/2`) are
  combined over every pool node (`DSPyBridge.Cluster.Reads`). Ownership changes emit `[:dspy_bridge, :cluster, :ownership]`
  (see `DSPyBridge.Cluster.Member`).
  """

  alias DSPyBridge.Cluster.{Remote, Rendezvous}
  alias DSPyBridge.{Error, Telemetry}
  alias DSPyBridge.Pool.{Router, Store}

  @scope __MODULE__

  # how long a call routed here by another node waits for this node's view of
  # the membership to agree that a local worker owns its session
  @view_wait_ms 2_000

  @typedoc "A worker of a clustered pool: `{node, index}`."
  @type key :: Rendezvous.key()

  @doc "The `:pg` scope of every clustered pool (started by the application)."
  @spec scope() :: atom()
  def scope, do: @scope

  @doc false
  # The `:pg` scope's child spec, for the application's supervisor.
  def child_spec(_arg), do: %{id: @scope, start: {:pg, :start_link, [@scope]}}

  @doc false
  # The group of a pool's worker keys: its member joins once per worker.
  def owner_group(pool), do: {:dspy_bridge_pool, pool}

  @doc false
  # The group of the members that hold a copy of the pool's records.
  def replica_group(pool), do: {:dspy_bridge_replicas, pool}

  @doc false
  def member_name(pool), do: Module.concat(pool, ClusterMember)

  @doc false
  # Whether calls to `pool` from this node go through the cluster: its local
  # pool is clustered, or it has none (then only pool nodes can serve them).
  @spec clustered?(atom()) :: boolean()
  def clustered?(pool) do
    case local_config(pool) do
      %{} = config -> Map.get(config, :cluster, false)
      nil -> true
    end
  end

  @doc "The worker keys of `pool` on every connected node, sorted."
  @spec keys(atom()) :: [key()]
  def keys(pool), do: keys_of(:pg.get_members(@scope, owner_group(pool)))

  @doc false
  # A member pid joined n times is the keys {node, 0} .. {node, n - 1}.
  @spec keys_of([pid()]) :: [key()]
  def keys_of(pids) do
    pids
    |> Enum.frequencies()
    |> Enum.flat_map(fn {pid, n} -> for index <- 0..(n - 1), do: {node(pid), index} end)
    |> Enum.sort()
  end

  @doc "The nodes where `pool` runs as part of the cluster, sorted."
  @spec nodes(atom()) :: [node()]
  def nodes(pool), do: pool |> keys() |> Enum.map(&elem(&1, 0)) |> Enum.uniq()

  @doc """
  The worker that owns `session` in `pool`: `{node, index}`, or `nil` when
  no node runs the pool. For a pool that is not clustered, the local
  worker `DSPyBridge.Pool.index_for/2` names.
  """
  @spec whereis(atom(), String.t() | atom()) :: key() | nil
  def whereis(pool, session) do
    session = if is_atom(session), do: Atom.to_string(session), else: session

    case local_config(pool) do
      %{cluster: true} -> owner(pool, session)
      %{size: size} -> {node(), Router.index_for(session, size)}
      nil -> owner(pool, session)
    end
  end

  defp owner(pool, session) do
    case Rendezvous.owner(session, keys(pool)) do
      nil ->
        case local_config(pool) do
          %{size: size} -> {node(), Router.index_for(session, size)}
          nil -> nil
        end

      key ->
        key
    end
  end

  @doc false
  # Where a call goes: `{:local, opts}` (the local pool, with the owner's
  # index in `opts[:worker]` when a local worker owns the session),
  # `{:remote, node, opts}` (`DSPyBridge.Pool.request/5` there, with the
  # owner's index in `opts[:worker]`, or none for a call without a session);
  # raises `ArgumentError` when no node runs the pool.
  @spec route(atom(), String.t() | nil, keyword()) ::
          {:local, keyword()} | {:remote, node(), keyword()}
  def route(pool, session, opts) do
    config = local_config(pool)

    cond do
      config != nil and not Map.get(config, :cluster, false) -> {:local, opts}
      config != nil and session == nil -> {:local, opts}
      # a call routed here by another node (with its owner's index)
      config != nil and is_integer(opts[:worker]) -> local_owner(pool, config, session, opts)
      session == nil or is_integer(opts[:worker]) -> any_node(pool, opts)
      true -> route_session(pool, config, session, opts)
    end
  end

  defp route_session(pool, config, session, opts) do
    keys = keys(pool)

    case {Rendezvous.owner(session, keys), config} do
      {nil, nil} ->
        no_pool(pool)

      {nil, _config} ->
        {:local, opts}

      {{node, index}, config} when node == node() and config != nil ->
        await_moved(pool, config, session, keys, opts)
        {:local, Keyword.put(opts, :worker, index)}

      {{node, index}, _config} ->
        {:remote, node, Keyword.put(opts, :worker, index)}
    end
  end

  # The caller's node named a local worker the owner of `session`. When this
  # node's :pg disagrees, it has not yet seen the membership change the
  # caller saw (each node learns of a node's loss on its own): wait for it
  # (await_view/3), so the session's replay happens before the call. If it
  # never agrees (the caller had not seen a join yet), the call goes on to
  # the owner this node sees (one more hop; bounded by the caller's timeout).
  defp local_owner(pool, config, session, opts) do
    keys = await_view(pool, session, {node(), opts[:worker]})

    case Rendezvous.owner(session, keys) do
      {node, index} when node != node() ->
        {:remote, node, Keyword.put(opts, :worker, index)}

      _local_or_none ->
        await_moved(pool, config, session, keys, opts)
        {:local, opts}
    end
  end

  # The keys once this node's :pg names `owner` the owner of `session`, or
  # the keys it sees after @view_wait_ms: the calling process monitors the
  # owner group and follows its joins and leaves (no polling). Emits
  # [:dspy_bridge, :cluster, :view_wait, :start | :stop] when it waits.
  defp await_view(pool, session, owner) do
    keys = keys(pool)

    if Rendezvous.owner(session, keys) == owner do
      keys
    else
      meta = %{pool: pool, session: session, owner: owner}
      started = System.monotonic_time()
      start = %{system_time: System.system_time(), monotonic_time: started}
      Telemetry.execute([:dspy_bridge, :cluster, :view_wait, :start], start, meta)

      {ref, pids} = :pg.monitor(@scope, owner_group(pool))
      deadline = System.monotonic_time(:millisecond) + @view_wait_ms
      {outcome, keys} = await_membership(ref, pids, session, owner, deadline)
      :pg.demonitor(@scope, ref)
      flush_membership(ref)

      stopped = System.monotonic_time()
      stop = %{duration: stopped - started, monotonic_time: stopped}
      meta = Map.put(meta, :outcome, outcome)
      Telemetry.execute([:dspy_bridge, :cluster, :view_wait, :stop], stop, meta)
      keys
    end
  end

  # `pids`: the owner group's members as :pg last told this process (its
  # notifications carry the pids that joined or left, once per join).
  defp await_membership(ref, pids, session, owner, deadline) do
    keys = keys_of(pids)

    if Rendezvous.owner(session, keys) == owner do
      {:agreed, keys}
    else
      receive do
        {^ref, :join, _group, joined} ->
          await_membership(ref, pids ++ joined, session, owner, deadline)

        {^ref, :leave, _group, left} ->
          await_membership(ref, pids -- left, session, owner, deadline)
      after
        max(deadline - System.monotonic_time(:millisecond), 0) -> {:timed_out, keys}
      end
    end
  end

  # notifications sent before the demonitor took effect
  defp flush_membership(ref) do
    receive do
      {^ref, _event, _group, _pids} -> flush_membership(ref)
    after
      0 -> :ok
    end
  end

  defp any_node(pool, opts) do
    case nodes(pool) do
      [] -> no_pool(pool)
      nodes -> {:remote, Enum.random(nodes), opts}
    end
  end

  # The local member must have done the moves of the membership this call
  # was routed by (`keys`) before the call reaches the session's new owner:
  # when it has not handled that membership yet, or the session is being
  # replayed, wait (within the call's timeout) until it has.
  defp await_moved(pool, %{table: table}, session, keys, opts) do
    handled = :ets.lookup(table, :cluster_keys)

    if handled != [{:cluster_keys, keys}] or :ets.member(table, {:moving, session}) do
      try do
        GenServer.call(member_name(pool), :sync, Keyword.get(opts, :timeout, 30_000))
      catch
        :exit, _ -> :ok
      end
    end

    :ok
  end

  # No node runs the pool: as for a pool that is not clustered, the call
  # raises (Store.config/1's ArgumentError), naming it.
  defp no_pool(pool), do: Store.config(pool)

  @doc false
  # The nodes a default-session mutation goes to: `:local` for a pool that is
  # not clustered (its own broadcast), else every pool node.
  @spec broadcast_nodes(atom()) :: :local | [node()]
  def broadcast_nodes(pool) do
    case local_config(pool) do
      %{cluster: true} -> Enum.uniq([node() | nodes(pool)])
      %{} -> :local
      nil -> with [] <- nodes(pool), do: no_pool(pool)
    end
  end

  @doc false
  # DSPyBridge.Pool.request/5: `local.(args...)` for the local pool (with the
  # owner's index), else `module.function(args...)` on the owner's node.
  @spec request({module(), atom()}, function(), list()) :: {:ok, term()} | {:error, Error.t()}
  def request(remote, local, [pool, session, command, args, opts]) do
    case route(pool, session, opts) do
      {:local, opts} -> local.(pool, session, command, args, opts)
      {:remote, node, opts} -> call_listening(node, remote, [pool, session, command, args, opts])
    end
  end

  # A remote call whose `listen` function (`on_chunk:`, `on_progress:`) must
  # run in the calling process: the owner node runs a stand-in that sends
  # each event here, and this process calls `listen` with it while a task
  # waits for the answer.
  defp call_listening(node, remote, [pool, session, command, args, opts]) do
    forwarding(opts[:listen], fn forward ->
      opts = if forward, do: Keyword.put(opts, :listen, forward), else: opts
      Remote.call(node, remote, [pool, session, command, args, opts])
    end)
  end

  @doc false
  # `run.(forward)` in a task, where `forward` (a `listen` function, for
  # another node to call) sends each event to this process, which gives it
  # to `listen` until `run` returns; without `listen`, `run.(nil)` here.
  @spec forwarding((String.t(), map() -> term()) | nil, (function() | nil -> result)) :: result
        when result: term()
  def forwarding(nil, run), do: run.(nil)

  def forwarding(listen, run) do
    caller = self()
    tag = make_ref()
    forward = fn name, event -> send(caller, {tag, name, event}) end
    task = Task.async(fn -> run.(forward) end)
    await_listening(task, tag, listen)
  end

  defp await_listening(%Task{ref: ref} = task, tag, listen) do
    receive do
      {^tag, name, event} ->
        listen.(name, event)
        await_listening(task, tag, listen)

      {^ref, result} ->
        Process.demonitor(ref, [:flush])
        flush_listening(tag, listen)
        result
    end
  end

  # events that came after the answer (from another path than it)
  defp flush_listening(tag, listen) do
    receive do
      {^tag, name, event} ->
        listen.(name, event)
        flush_listening(tag, listen)
    after
      0 -> :ok
    end
  end

  @doc false
  # DSPyBridge.Pool.broadcast/4: `module.function(args...)` here for a pool
  # that is not clustered, else on every pool node, the results combined by `combine`.
  @spec broadcast({module(), atom()}, function(), list()) :: {:ok, term()} | {:error, Error.t()}
  def broadcast({module, function} = remote, combine, [pool | _] = args) do
    case broadcast_nodes(pool) do
      :local -> apply(module, function, args)
      nodes -> combine.(Remote.multicall(nodes, remote, args))
    end
  end

  @doc false
  # Records `record` in the local table and, for a clustered pool, sends it
  # to the other pool nodes (`replicate/3`). Runs in the worker process.
  @spec record(atom(), atom(), boolean(), Store.record(), {:ok, term()}) :: :ok
  def record(pool, table, cluster?, record, reply) do
    Store.apply_record(table, record, reply)
    if cluster?, do: replicate(pool, record, reply), else: :ok
  end

  @doc """
  What each node of `pool` holds: `[%{node, workers, sessions_owned,
  records, moved_in, moved_out}]` (nodes that do not answer within 5 s are
  left out), sessions counted from each node's copy of the records.
  """
  @spec stats(atom()) :: [map()]
  def stats(pool) do
    nodes = nodes(pool)

    nodes
    |> :erpc.multicall(GenServer, :call, [member_name(pool), :info], 5_000)
    |> Enum.zip(nodes)
    |> Enum.flat_map(fn
      {{:ok, info}, node} -> [Map.put(info, :node, node)]
      {_failed, _node} -> []
    end)
  end

  @doc false
  # Whether the worker at `index` of a pool of `size` serves `session`: by
  # the session's hash, or in a cluster by rendezvous over every node's workers.
  @spec owns_fun(atom(), non_neg_integer(), pos_integer(), boolean()) :: (String.t() -> boolean())
  def owns_fun(_pool, index, size, false), do: &(Router.index_for(&1, size) == index)
  def owns_fun(pool, index, _size, true), do: &(whereis(pool, &1) == {node(), index})

  @doc false
  # Called by the worker that recorded `record` (after its own table): sends
  # it to the members on the other pool nodes (DSPyBridge.Cluster.Member),
  # asynchronously: one message per other node. Default-session records are
  # not sent (their mutations run on every pool node, which records them
  # itself), but for a checkpoint: one worker answers it.
  @spec replicate(atom(), Store.record(), {:ok, term()}) :: :ok
  def replicate(pool, record, reply) do
    if replicated?(record) do
      for pid <- :pg.get_members(@scope, replica_group(pool)),
          node(pid) != node(),
          do: send(pid, {:replicate, record, reply})
    end

    :ok
  end

  # A session's records go to every pool node. The default session's are
  # made on each node by its own part of the broadcast, but for a checkpoint,
  # which one worker answered.
  defp replicated?({:put_cache, _}), do: false
  defp replicated?({:checkpoint, nil, _, _}), do: true
  defp replicated?(record), do: elem(record, 1) != nil

  @doc false
  def local_config(pool) do
    if :ets.whereis(pool) != :undefined, do: Store.config(pool)
  rescue
    ArgumentError -> nil
  end
end
