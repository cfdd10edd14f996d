defmodule DSPyBridge.Cluster.Member do
  @moduledoc """
  A clustered pool's member on its node (a child of the pool started with
  `cluster: true`, named `<pool>.ClusterMember`). It

    * joins the pool's replica group, copies the records another node holds
      into its pool's table, replays the sessions its workers are about to
      own (and the default session's records) into them, and only then joins
      the pool's owner group once per worker, so calls reach its workers
      after their sessions are there;
    * applies the records other nodes replicate to it (every session record
      goes to every pool node: `DSPyBridge.Cluster.replicate/3`), and runs
      one made for a session a local worker owns on that worker too (it was
      made on another: an old owner as this node joined, or a stale view);
    * on every join or leave in the owner group (`:pg.monitor/2`), works out
      which sessions changed owner (`DSPyBridge.Cluster.Rendezvous.moves/3`):
      a session a local worker now owns is replayed into it from the local
      copy of its records (calls for it wait meanwhile); a session a local
      worker no longer owns is drained (its calls in flight finish) and then
      ended on that worker, so no session has two owners.

  Each move emits `[:dspy_bridge, :cluster, :ownership]` through
  `DSPyBridge.Telemetry` on the nodes it leaves and reaches: measurements
  `%{duration}` (native units, the replay or drain), metadata `%{pool,
  session, from, to, direction: :in | :out, reason: :join | :leave | :sync}`
  (`from`/`to` are `{node, index}` keys).
  """

  use GenServer
  require Logger

  alias DSPyBridge.{Cluster, Telemetry, Worker}
  alias DSPyBridge.Cluster.Rendezvous
  alias DSPyBridge.Pool.Store

  # how long a departing session's calls in flight may take to finish before
  # it is ended anyway, and how often to look
  @drain_timeout 30_000
  @drain_poll 20
  @replay_timeout 30_000

  @doc false
  def child_spec(opts) do
    %{id: :cluster_member, start: {__MODULE__, :start_link, [opts]}, shutdown: 5_000}
  end

  @doc false
  def start_link(opts) do
    GenServer.start_link(__MODULE__, Map.new(opts), name: Cluster.member_name(opts[:pool]))
  end

  @impl true
  def init(%{pool: pool, table: table, size: size}) do
    :ok = :pg.join(Cluster.scope(), Cluster.replica_group(pool), self())

    state = %{
      pool: pool,
      table: table,
      size: size,
      keys: [],
      ref: nil,
      moved_in: 0,
      moved_out: 0,
      draining: 0
    }

    {:ok, state, {:continue, :join}}
  end

  @impl true
  def handle_continue(:join, %{pool: pool, size: size} = state) do
    copied = copy_records(state)
    {ref, pids} = :pg.monitor(Cluster.scope(), Cluster.owner_group(pool))
    before = Cluster.keys_of(pids)
    own = for index <- 0..(size - 1), do: {node(), index}

    # the default session's records copied from another node (the cluster's
    # default LM, programs, cache) go to every local worker first
    if copied > 0 do
      batches = Store.replay_batches(state.table, &is_nil/1)
      for index <- 0..(size - 1), do: replay(state, index, batches)
    end

    state = rebalance(%{state | ref: ref}, before, Enum.sort(before ++ own), :join)
    :ok = :pg.join(Cluster.scope(), Cluster.owner_group(pool), List.duplicate(self(), size))
    {:noreply, state}
  end

  @impl true
  def handle_info({ref, event, _group, _pids}, %{ref: ref} = state)
      when event in [:join, :leave] do
    {:noreply, rebalance(state, state.keys, Cluster.keys(state.pool), event)}
  end

  def handle_info({:replicate, record, reply}, state) do
    Store.apply_record(state.table, record, reply)
    apply_to_owner(state, record, reply)
    {:noreply, state}
  end

  def handle_info({:drained, _session}, state),
    do: {:noreply, %{state | draining: state.draining - 1}}

  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  # Replays are done in this process, so by the time this is answered the
  # moves of every membership change this node's :pg told it of before are
  # replayed (DSPyBridge.Cluster.route/3 calls it when it sees a membership
  # the member has not handled yet, or a session being moved).
  def handle_call(:sync, _from, state) do
    state =
      case Cluster.keys(state.pool) do
        keys when keys == state.keys -> state
        keys -> rebalance(state, state.keys, keys, :sync)
      end

    {:reply, :ok, state}
  end

  def handle_call(:info, _from, state) do
    owned =
      state.table
      |> Store.sessions()
      |> Enum.count(&match?({n, _} when n == node(), Rendezvous.owner(&1, state.keys)))

    {:reply,
     %{
       workers: state.size,
       keys: state.keys,
       sessions_owned: owned,
       records: Store.counts(state.table),
       moved_in: state.moved_in,
       moved_out: state.moved_out,
       draining: state.draining
     }, state}
  end

  # -- internals ----------------------------------------------------------------

  # A record made on another node's worker for a session a local worker owns
  # (in the membership this member has replayed for): that worker has not
  # run it. It happens when a mutation reaches the old owner as this node
  # joins (after its replay, before its join is seen) or by a caller whose
  # view is stale; the owner then runs it too. A session still to be
  # replayed here gets the record with its replay instead.
  defp apply_to_owner(state, record, reply) do
    with session when is_binary(session) <- record_session(record),
         {here, index} when here == node() <- Rendezvous.owner(session, state.keys),
         {pid, _, _} <- Store.worker(state.table, index) do
      for {command, args} <- Store.commands_for(state.table, record, reply) do
        case Worker.request(pid, command, args, timeout: @replay_timeout) do
          {:ok, _} ->
            :ok

          {:error, %DSPyBridge.Error{type: :not_found}} ->
            :ok

          {:error, error} ->
            Logger.warning(
              "DSPyBridge.Cluster #{inspect(state.pool)}: applying #{command} made on " <>
                "another node to worker #{index} failed: #{Exception.message(error)}"
            )
        end
      end
    end
  end

  defp record_session({:put_cache, _}), do: nil
  defp record_session(record), do: elem(record, 1)

  # The records of the first other pool node that answers (none: nothing to copy).
  defp copy_records(%{pool: pool, table: table}) do
    others =
      for pid <- :pg.get_members(Cluster.scope(), Cluster.replica_group(pool)),
          node(pid) != node(),
          do: node(pid)

    Enum.find_value(Enum.uniq(others), 0, fn node ->
      try do
        rows = :erpc.call(node, Store, :records, [pool], 10_000)
        Store.load_records(table, rows)
        length(rows)
      catch
        _, _ -> nil
      end
    end)
  end

  defp rebalance(state, old_keys, new_keys, reason) do
    moves = Rendezvous.moves(Store.sessions(state.table), old_keys, new_keys)
    # the membership this node's moves are done for (DSPyBridge.Cluster.route/3)
    :ets.insert(state.table, {:cluster_keys, new_keys})
    here = node()
    incoming = for {s, from, {^here, index} = to} <- moves, do: {s, from, to, index}

    outgoing =
      for {s, {^here, index} = from, to} <- moves,
          not match?({^here, _}, to),
          do: {s, from, to, index}

    # calls for an incoming session wait for its replay (DSPyBridge.Cluster.route/3)
    for {s, _, _, _} <- incoming, do: :ets.insert(state.table, {{:moving, s}, true})

    incoming
    |> Task.async_stream(
      fn {session, from, to, index} ->
        started = System.monotonic_time()
        replay(state, index, Store.replay_batches(state.table, &(&1 == session)))
        :ets.delete(state.table, {:moving, session})
        ownership(state, session, from, to, :in, reason, started)
      end,
      max_concurrency: 8,
      timeout: :infinity
    )
    |> Stream.run()

    # Draining may take as long as the longest call in flight: it runs apart,
    # so this process goes on routing-related work (the next move, :sync).
    member = self()

    for {session, from, to, index} <- outgoing do
      Task.start(fn ->
        started = System.monotonic_time()
        drain_and_end(state, session, index)
        ownership(state, session, from, to, :out, reason, started)
        send(member, {:drained, session})
      end)
    end

    %{
      state
      | keys: new_keys,
        draining: state.draining + length(outgoing),
        moved_in: state.moved_in + length(incoming),
        moved_out: state.moved_out + length(outgoing)
    }
  end

  defp ownership(state, session, from, to, direction, reason, started) do
    Telemetry.execute(
      [:dspy_bridge, :cluster, :ownership],
      %{duration: System.monotonic_time() - started},
      %{
        pool: state.pool,
        session: session,
        from: from,
        to: to,
        direction: direction,
        reason: reason
      }
    )
  end

  defp replay(state, index, batches) do
    with {pid, _, _} <- await_worker(state.table, index) do
      for batch <- batches, {command, args} <- batch do
        case Worker.request(pid, command, args, timeout: @replay_timeout) do
          {:ok, _} ->
            :ok

          {:error, error} ->
            Logger.warning(
              "DSPyBridge.Cluster #{inspect(state.pool)}: replaying #{command} into " <>
                "worker #{index} failed: #{Exception.message(error)}"
            )
        end
      end
    end
  end

  # The worker at `index`, waiting (bounded) while it is between two OS
  # processes or not yet started (a pool started with `await_ready: false`);
  # a worker still starting takes requests once it is ready.
  defp await_worker(table, index, tries \\ 750) do
    case Store.worker(table, index) do
      nil when tries > 0 ->
        Process.sleep(@drain_poll)
        await_worker(table, index, tries - 1)

      worker ->
        worker
    end
  end

  # Lets the session's calls in flight on the worker finish (bounded), then
  # ends the session there; its records stay (they replay wherever it goes).
  defp drain_and_end(state, session, index) do
    with {pid, _, _} <- Store.worker(state.table, index) do
      deadline = System.monotonic_time(:millisecond) + @drain_timeout
      await_idle(pid, session, deadline)

      # unless the session came back meanwhile
      if Cluster.whereis(state.pool, session) != {node(), index},
        do: Worker.request(pid, "end_session", %{"session_id" => session}, timeout: 5_000)
    end
  end

  defp await_idle(pid, session, deadline) do
    busy? =
      case Worker.request(pid, "list_sessions", %{"session_id" => session}, timeout: 5_000) do
        {:ok, %{"sessions" => [%{"in_flight" => n}]}} when n > 0 -> true
        _ -> false
      end

    if busy? and System.monotonic_time(:millisecond) < deadline do
      # polling a condition with a bound: the worker has no "idle" event
      Process.sleep(@drain_poll)
      await_idle(pid, session, deadline)
    end
  end
end
