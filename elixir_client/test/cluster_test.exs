defmodule DSPyBridge.ClusterTest do
  # One logical pool over several BEAM nodes: peers on 127.0.0.1 (OTP's
  # :peer), each with a clustered pool of real workers; the test node has no
  # pool of its own and calls through the cluster. Not async: the peers'
  # workers need the machine's cores.
  use ExUnit.Case, async: false

  import DSPyBridge.Test.Cluster

  alias DSPyBridge.{Cluster, Error, Pool}
  alias DSPyBridge.Cluster.Rendezvous

  @moduletag :cluster
  @moduletag :dspy
  @moduletag timeout: 180_000

  setup_all do
    ensure_distributed!()
    :ok
  end

  test "sessions spread over the nodes by their workers, calls work from a node with no pool, " <>
         "and a stopped node's sessions are replayed on their new owners" do
    {[{_, a, _}, {_, b, _}, {c_peer, c, _}], keys} =
      peers(cluster_a: 2, cluster_b: 1, cluster_c: 1)

    refute Process.whereis(pool()), "the test node has no pool of its own"
    sessions = for i <- 1..120, do: "user-#{i}"
    set_up_sessions(sessions)

    # spread: exactly as rendezvous hashing predicts, each worker near its
    # quarter (30), so the node with two workers has about twice the share
    owners = Map.new(sessions, &{&1, DSPyBridge.whereis(pool(), &1)})
    assert owners == Map.new(sessions, &{&1, Rendezvous.owner(&1, keys)})
    per_worker = owners |> Map.values() |> Enum.frequencies()
    assert Enum.sort(Map.keys(per_worker)) == keys
    assert Enum.all?(Map.values(per_worker), &(&1 in 20..40)), inspect(per_worker)
    per_node = owners |> Map.values() |> Enum.frequencies_by(&elem(&1, 0))
    assert per_node[a] > per_node[b] and per_node[a] > per_node[c], inspect(per_node)

    # each call reached its owner: the owner's worker holds the session
    held = Enum.flat_map([{a, 2}, {b, 1}, {c, 1}], fn {n, s} -> sessions_held(n, s) end)
    assert Map.new(held) == owners

    assert_answers(sessions)
    # a call's on_chunk runs here, in the caller, though the owner is elsewhere
    me = self()
    streamed = "streamed"
    set_up_session(streamed)

    assert {:ok, %{"outputs" => %{"answer" => answer}}} =
             DSPyBridge.execute(pool(), "qa", %{question: "who?"},
               session: streamed,
               on_chunk: fn item -> send(me, {:chunk_in, self(), item}) end
             )

    assert answer == answer_of(streamed)
    assert_received {:chunk_in, ^me, {:chunk, "answer", _}}

    # and stream/4 from this node with no pool: the owner's chunks, then the answer
    items = Enum.to_list(DSPyBridge.stream(pool(), "qa", %{question: "who?"}, session: streamed))
    assert {:done, %{"outputs" => %{"answer" => ^answer}}} = List.last(items)

    # cluster-wide stats: every node, all sessions owned once
    stats = Cluster.stats(pool())
    assert Enum.sort(for st <- stats, do: st.node) == Enum.sort([a, b, c])
    assert Enum.sum(for st <- stats, do: st.sessions_owned) == length(sessions) + 1

    # and from a pool node, the same
    for s <- Enum.take(sessions, 8), do: assert(execute(s, b) == answer_of(s))

    # a call in flight on c when c goes away fails at once, retryable
    [on_c | _] = for {s, {^c, _}} <- owners, do: s
    caller = self()

    slow =
      Task.async(fn ->
        send(caller, :sent)
        DSPyBridge.request(pool(), "sleep", %{ms: 20_000}, session: on_c, timeout: 30_000)
      end)

    assert_receive :sent
    await_in_flight(c)
    stopped_at = System.monotonic_time(:millisecond)
    :ok = :peer.stop(c_peer)

    assert {:error, %Error{type: :worker_exited, retryable: true, details: details}} =
             Task.await(slow, 10_000)

    assert details["reason"] == "node_down"
    assert System.monotonic_time(:millisecond) - stopped_at < 5_000

    # c's sessions now belong to a and b, which replay them. A call on a, as
    # soon as a's :pg has dropped c, for a session a now owns, waits for its
    # replay instead of failing
    survivors = keys -- [{c, 0}]
    await_pg_view(a, survivors)

    to_a = for {s, {^c, _}} <- owners, match?({^a, _}, Rendezvous.owner(s, survivors)), do: s
    assert to_a != []
    for s <- to_a, do: assert(execute(s, a) == answer_of(s))

    # and from the test node as soon as its :pg has dropped c: the new owners
    # (a and b, each learning of the loss on its own) replay before answering
    await_pg_view(node(), survivors)
    moved = for {s, {^c, _}} <- owners, do: s
    assert_answers(moved)

    await_keys(pool(), survivors, [a, b])

    for s <- sessions,
        do: assert(DSPyBridge.whereis(pool(), s) == Rendezvous.owner(s, survivors))

    assert moved != []
    assert_answers(sessions)

    held = Enum.flat_map([{a, 2}, {b, 1}], fn {n, s} -> sessions_held(n, s) end)
    all = ["streamed" | sessions]
    assert Map.new(held) == Map.new(all, &{&1, Rendezvous.owner(&1, survivors)})
    assert length(held) == length(all)
  end

  test "a joining node takes about its share, only those sessions move, " <>
         "and a call in flight on a session that moves still succeeds" do
    {[{_, a, _}, {_, b, _}], old_keys} = peers(join_a: 1, join_b: 1)
    sessions = for i <- 1..30, do: "tenant-#{i}"
    set_up_sessions(sessions)
    assert_answers(sessions)

    # a default-session program: on every pool node, and on the joiner too
    {:ok, _} =
      DSPyBridge.create_program(pool(), %{program_id: "shared", signature: "question -> answer"})

    for node <- [a, b] do
      assert {:ok, %{"program_id" => "shared"}} =
               :erpc.call(node, DSPyBridge, :get_program, [pool(), "shared", [worker: 0]])
    end

    c = :"join_c@127.0.0.1"
    new_keys = Enum.sort(old_keys ++ [{c, 0}])
    predicted = Rendezvous.moves(sessions, old_keys, new_keys)
    assert Enum.all?(predicted, &match?({_, _, {^c, 0}}, &1))
    assert length(predicted) in 5..16, "about a third of 30: #{length(predicted)}"

    # a slow execute on a session about to move, on its old owner
    [{moving, _, _} | _] = predicted
    slow_lm = [model: "mock/slow", extra: %{default: "slow answer", latency_ms: 3_000}]

    slow =
      Task.async(fn ->
        DSPyBridge.execute(pool(), "qa", %{question: "?"},
          session: moving,
          lm: slow_lm,
          timeout: 30_000
        )
      end)

    {old_node, _} = DSPyBridge.whereis(pool(), moving)
    await_in_flight(old_node)

    {_peer, ^c} = start_peer(:join_c)
    for node <- [a, b, c], do: forward_telemetry(node, self())
    start_pool(c, pool(), 1)
    await_keys(pool(), new_keys, [a, b, c])

    # each move was announced where it arrived and where it left
    for {session, from, to} <- predicted do
      for direction <- [:in, :out] do
        assert_receive {:telemetry, [:dspy_bridge, :cluster, :ownership], %{duration: _},
                        %{
                          session: ^session,
                          from: ^from,
                          to: ^to,
                          direction: ^direction,
                          reason: :join
                        }}
      end
    end

    refute_received {:telemetry, [:dspy_bridge, :cluster, :ownership], _, _}

    assert {:ok, %{"outputs" => %{"answer" => "slow answer"}}} = Task.await(slow, 30_000)

    assert {:ok, %{"program_id" => "shared"}} =
             :erpc.call(c, DSPyBridge, :get_program, [pool(), "shared", [worker: 0]])

    # exactly the predicted sessions moved, all to c
    moved =
      for s <- sessions, DSPyBridge.whereis(pool(), s) != Rendezvous.owner(s, old_keys), do: s

    assert Enum.sort(moved) == Enum.sort(for {s, _, _} <- predicted, do: s)
    assert member_info(c, pool()).moved_in == length(predicted)
    assert_answers(sessions)

    # the old owners let them go (drained, then ended): one owner each
    held = Enum.flat_map([a, b, c], &sessions_held(&1, 1))
    assert Map.new(held) == Map.new(sessions, &{&1, Rendezvous.owner(&1, new_keys)})
    assert length(held) == length(sessions)
  end

  test "after a partition heals, no session is served by two owners" do
    {[{_, a, _}, {b_peer, b, _}], keys} = peers(part_a: 1, part_b: 1)
    sessions = for i <- 1..16, do: "acct-#{i}"
    set_up_sessions(sessions)
    assert_answers(sessions)

    # b is cut off from every node: each side takes over the other's sessions
    cookie = :peer.call(b_peer, DSPyBridge.Test.Cluster, :isolate, [])
    # global's prevent_overlapping_partitions may also cut the test node from
    # a while the nodes learn of b's loss: reconnect it, once b is gone
    await_keys(pool(), [{a, 0}], [a], reconnect: [a], gone: [b])
    assert %{keys: [{^b, 0}]} = await_member(b_peer, [{b, 0}])

    # the test node, on a's side, is served by a alone, same answers
    assert_answers(sessions)

    :ok = :peer.call(b_peer, DSPyBridge.Test.Cluster, :heal, [cookie, [node(), a]])
    await_keys(pool(), keys, [a, b])

    # one owner per session, agreed by every node, and held by that worker only
    for node <- [a, b],
        s <- sessions,
        do:
          assert(:erpc.call(node, DSPyBridge, :whereis, [pool(), s]) == Rendezvous.owner(s, keys))

    held = Enum.flat_map([a, b], &sessions_held(&1, 1))
    assert length(held) == length(sessions), "a session held twice: #{inspect(held)}"
    assert Map.new(held) == Map.new(sessions, &{&1, Rendezvous.owner(&1, keys)})
    assert_answers(sessions)
  end

  test "a session's compile and checkpoint run on its owner, and the compiled programs " <>
         "survive the owner's loss" do
    {started, _keys} = peers(compile_a: 1, compile_b: 1)
    s = "compiled"
    lm = [model: "mock/knows", extra: %{generator: %{name: "knows", run: &knows/1}}]
    {:ok, _} = DSPyBridge.configure_lm(pool(), lm, session: s)

    for id <- ["qa", "base"] do
      {:ok, _} =
        DSPyBridge.create_program(pool(), %{program_id: id, signature: "question -> answer"},
          session: s
        )
    end

    {owner, 0} = DSPyBridge.whereis(pool(), s)
    [{owner_peer, ^owner, _}] = for {_, node, _} = p <- started, node == owner, do: p
    [{_, other, _}] = for {_, node, _} = p <- started, node != owner, do: p
    # compile/4 from the test node (no pool): on the owner, progress here
    me = self()

    assert {:ok, %{"program_id" => "qa", "score_after" => 1.0}} =
             compile_with_progress("qa", session: s)

    assert_received {:progress, ^me, _}

    # checkpoint_program/3 from the pool node that does not own the session,
    # of a program compiled by a raw request (which records nothing)
    compile_base =
      Map.new(training()) |> Map.merge(%{program_id: "base", optimizer: "labeled_few_shot"})

    {:ok, _} =
      DSPyBridge.request(pool(), "compile_program", Map.put(compile_base, :session_id, s),
        session: s,
        timeout: 30_000
      )

    assert {:ok, %{"program_id" => "base"}} =
             :erpc.call(other, DSPyBridge, :checkpoint_program, [pool(), "base", [session: s]])

    # both ran on the owner: the other node's worker never got the session
    assert sessions_held(other, 1) == []
    assert sessions_held(owner, 1) == [{s, {owner, 0}}]

    # and both compiled programs are recorded on every pool node
    for node <- [owner, other], id <- ["qa", "base"] do
      rows = :erpc.call(node, DSPyBridge.Pool.Store, :records, [pool()])
      key = {:rec, s, :program, id}

      assert [{^key, _, "import_program", %{"document" => _}}] =
               for({^key, _, _, _} = r <- rows, do: r)
    end

    ask = fn program -> for q <- ["Peru?", "Japan?"], do: ask(s, program, q) end
    assert ask.("qa") == ["Lima", "Tokyo"]
    assert ask.("base") == ["Lima", "Tokyo"]

    # the owner goes: the other node replays the session, compiled
    :ok = :peer.stop(owner_peer)
    await_keys(pool(), [{other, 0}], [other])
    assert DSPyBridge.whereis(pool(), s) == {other, 0}
    assert ask.("qa") == ["Lima", "Tokyo"]
    assert ask.("base") == ["Lima", "Tokyo"]
    assert {:ok, %{"demos" => 2}} = DSPyBridge.get_program(pool(), "qa", session: s)
  end

  test "the default session's compile reaches every worker of every pool node, and its " <>
         "checkpoint is recorded on every pool node" do
    {[{_, a, _}, {_, b, _}], _keys} = peers(default_a: 2, default_b: 1)
    lm = [model: "mock/knows", extra: %{generator: %{name: "knows", run: &knows/1}}]
    {:ok, _} = DSPyBridge.configure_lm(pool(), lm)

    for id <- ["qa", "base"] do
      {:ok, _} =
        DSPyBridge.create_program(pool(), %{program_id: id, signature: "question -> answer"})
    end

    # from the test node (no pool): run on a pool node, compiled on one of its
    # workers, then on every one; its progress comes here
    me = self()
    assert {:ok, %{"program_id" => "qa", "score_after" => 1.0}} = compile_with_progress("qa")
    assert_received {:progress, ^me, %{"event" => "progress"}}

    on = fn node, index, program ->
      args = [pool(), program, %{question: "Peru?"}, [worker: index, timeout: 15_000]]
      {:ok, %{"outputs" => %{"answer" => answer}}} = :erpc.call(node, DSPyBridge, :execute, args)
      answer
    end

    assert for({node, i} <- [{a, 0}, {a, 1}, {b, 0}], do: on.(node, i, "qa")) ==
             ["Lima", "Lima", "Lima"]

    # a checkpoint of a program one worker compiled (a raw request records
    # nothing): recorded on the other pool node too
    compile_base =
      Map.new(training()) |> Map.merge(%{program_id: "base", optimizer: "labeled_few_shot"})

    {:ok, _} =
      :erpc.call(a, DSPyBridge, :request, [
        pool(),
        "compile_program",
        compile_base,
        [worker: 0, timeout: 30_000]
      ])

    assert {:ok, %{"program_id" => "base"}} =
             :erpc.call(a, DSPyBridge, :checkpoint_program, [pool(), "base", [worker: 0]])

    for node <- [a, b], id <- ["qa", "base"], do: await_import_record(node, nil, id)
  end

  test "a mutation made on another node's worker (an old owner, a stale view) reaches " <>
         "the session's owner too" do
    {[{_, a, _}, {_, b, _}], keys} = peers(stale_a: 1, stale_b: 1)
    s = Enum.find(for(i <- 1..40, do: "stale-#{i}"), &(Rendezvous.owner(&1, keys) == {b, 0}))
    set_up_session(s)
    [{0, a_worker, _, _}] = :erpc.call(a, Pool, :workers, [pool()])

    # as the old owner would run it: on a's worker, recorded there and
    # replicated (DSPyBridge.Worker.request/4 with the record a call makes)
    on_a = fn command, args, record ->
      opts = [record: record, timeout: 30_000]
      {:ok, _} = :erpc.call(a, DSPyBridge.Worker, :request, [a_worker, command, args, opts])
    end

    late = %{"session_id" => s, "program_id" => "late", "signature" => "question -> answer"}
    on_a.("create_program", late, {:put_program, s, "create_program", late})

    # b's worker runs it too (the record reaches b by a message of its own)
    assert await_ok(fn -> DSPyBridge.get_program(pool(), "late", session: s) end)

    assert {:ok, %{"outputs" => %{"answer" => answer}}} =
             DSPyBridge.execute(pool(), "late", %{question: "who?"}, session: s)

    assert answer == answer_of(s)

    # and a delete made there (of a program a's worker has too) deletes on b
    qa = %{"session_id" => s, "program_id" => "qa"}
    on_a.("create_program", Map.put(qa, "signature", "question -> answer"), nil)
    on_a.("delete_program", qa, {:delete_program, s, "qa"})

    assert await_ok(fn ->
             case DSPyBridge.get_program(pool(), "qa", session: s) do
               {:error, %Error{type: :not_found}} -> {:ok, :gone}
               other -> other
             end
           end)

    assert DSPyBridge.whereis(pool(), s) == {b, 0}
  end

  test "a call routed here before this node sees a loss waits for its :pg to change, " <>
         "and goes on to the owner it sees when it never agrees" do
    {[{_, a, _}, {b_peer, b, _}], keys} = peers(view_a: 1, view_b: 1)
    on_b = for i <- 1..40, s = "view-#{i}", Rendezvous.owner(s, keys) == {b, 0}, do: s
    [never_agrees, agrees | _] = on_b
    set_up_sessions([never_agrees, agrees])
    forward_telemetry(a, self())
    [{0, _, a_os_pid, _}] = :erpc.call(a, Pool, :workers, [pool()])
    [{0, _, b_os_pid, _}] = :erpc.call(b, Pool, :workers, [pool()])

    # as a caller that (wrongly) sees a's worker as the owner routes it: a
    # waits for its view, which never agrees, then forwards it to b
    ping_on_a = fn session ->
      args = [pool(), session, "ping", %{}, [worker: 0, timeout: 15_000]]
      :erpc.call(a, Pool, :request, args, 20_000)
    end

    assert {:ok, %{"pid" => ^b_os_pid}} = ping_on_a.(never_agrees)

    assert_received {:telemetry, [:dspy_bridge, :cluster, :view_wait, :stop], %{duration: _},
                     %{session: ^never_agrees, owner: {^a, 0}, outcome: :timed_out}}

    # as a caller that has seen b go routes it: a waits, b goes, a's view
    # agrees, and a's worker answers, with the session replayed
    waiting = Task.async(fn -> ping_on_a.(agrees) end)

    assert_receive {:telemetry, [:dspy_bridge, :cluster, :view_wait, :start], _,
                    %{session: ^agrees, owner: {^a, 0}}},
                   10_000

    :ok = :peer.stop(b_peer)
    assert {:ok, %{"pid" => ^a_os_pid}} = Task.await(waiting, 20_000)

    assert_receive {:telemetry, [:dspy_bridge, :cluster, :view_wait, :stop], _,
                    %{session: ^agrees, outcome: :agreed}},
                   10_000

    assert execute(agrees, a) == answer_of(agrees)
  end

  test "the reads of the whole pool work from a node with no pool: sessions and usage " <>
         "from every pool node, stats combined" do
    {[{_, a, _}, {_, b, _}], keys} = peers(reads_a: 2, reads_b: 1)
    sessions = for i <- 1..12, do: "reader-#{i}"
    set_up_sessions(sessions)
    owners = Map.new(sessions, &{&1, Rendezvous.owner(&1, keys)})

    # every session once, named by the node and worker that own it
    listed = fn node ->
      {:ok, %{"sessions" => list}} = :erpc.call(node, DSPyBridge, :list_sessions, [pool()])

      for %{"session_id" => id, "node" => n, "worker" => w} <- list,
          id != "default",
          into: %{},
          do: {id, {String.to_atom(n), w}}
    end

    assert listed.(node()) == owners
    assert listed.(a) == owners

    for s <- Enum.take(sessions, 3) do
      {node, index} = owners[s]
      assert {:ok, %{"sessions" => [entry]}} = DSPyBridge.list_sessions(pool(), session: s)
      assert %{"session_id" => ^s, "node" => node_name, "worker" => ^index} = entry
      assert node_name == Atom.to_string(node)
    end

    # the default session's usage, summed over every pool node's workers
    {:ok, _} = DSPyBridge.create_program(pool(), %{program_id: "shared", signature: "q -> a"})

    for i <- 1..6,
        do:
          {:ok, _} = DSPyBridge.execute(pool(), "shared", %{q: "question #{i}"}, timeout: 15_000)

    assert {:ok, %{"total" => %{"requests" => 6}}} = DSPyBridge.get_usage(pool())

    # stats: every node's workers, the records of the pool
    assert {:ok, stats} = DSPyBridge.stats(pool())
    assert %{size: 3, sessions: 12, programs: 13} = stats
    assert Enum.sort(stats.nodes) == Enum.sort([a, b])

    assert Enum.sort(for w <- stats.workers, do: {w.node, w.index}) ==
             Enum.sort([{a, 0}, {a, 1}, {b, 0}])

    assert Enum.all?(stats.workers, &match?(%{status: :ready, worker_stats: %{}}, &1))
  end

  test "a pool no node runs raises as a local one does; an unreachable node is node_down" do
    assert_raise ArgumentError, ~r/no DSPyBridge.Pool named NoSuchClusterPool/, fn ->
      DSPyBridge.ping(NoSuchClusterPool, session: "s")
    end

    assert DSPyBridge.whereis(NoSuchClusterPool, "s") == nil

    # a node that cannot be reached: at once, retryable
    assert {:error,
            %Error{type: :worker_exited, retryable: true, details: %{"reason" => "node_down"}}} =
             Cluster.Remote.remote_call(:"nowhere@127.0.0.1", {:erlang, :node, []}, 5_000, "ping")

    assert Cluster.keys(NoSuchClusterPool) == []
    refute Process.whereis(Pool)
  end

  @tag :bench
  test "bench: 3 nodes x 2 workers against 1 node x 2 workers, and the cost of replication" do
    lm = [model: "mock/bench", extra: %{default: "ok", latency_ms: 20}]
    sessions = for i <- 1..60, do: "bench-#{i}"
    n = 1_500

    run = fn specs ->
      {started, _keys} = peers(specs, default_lm: lm)

      {created_us, _} =
        :timer.tc(fn ->
          for s <- sessions,
              do: {:ok, _} = DSPyBridge.create_program(pool(), "question -> answer", session: s)
        end)

      programs = Map.new(sessions, fn s -> {s, program_of(s)} end)
      # warm every worker (DSPy's first call is slow)
      assert_answers_ok(sessions, programs, length(sessions))
      {elapsed_us, _} = :timer.tc(fn -> assert_answers_ok(sessions, programs, n) end)
      for {peer, _, _} <- started, do: :peer.stop(peer)
      await_keys(pool(), [], [])
      %{calls_per_s: round(n * 1_000_000 / elapsed_us), create_us: div(created_us, 60)}
    end

    one = run.(bench1_a: 2)
    three = run.(bench3_a: 2, bench3_b: 2, bench3_c: 2)

    # what one replicated record costs on the wire: a create_program's
    record =
      {:put_program, "bench-1", "create_program",
       %{"session_id" => "bench-1", "signature" => "question -> answer", "program_id" => "p-1"}}

    bytes = :erlang.external_size({:replicate, record, {:ok, %{"program_id" => "p-1"}}})

    report =
      "#{n} concurrent executes over 60 sessions (mock LM, 20 ms latency), from a node " <>
        "with no pool: 1 node x 2 workers #{one.calls_per_s} calls/s, 3 nodes x 2 workers " <>
        "#{three.calls_per_s} calls/s (#{Float.round(three.calls_per_s / one.calls_per_s, 2)}x); " <>
        "create_program one at a time: #{one.create_us} us (replicated to no other node) vs " <>
        "#{three.create_us} us (to 2 others); one replicated record #{bytes} bytes"

    IO.puts("\n  " <> report)
    File.write!(Path.join(Mix.Project.build_path(), "cluster_bench.txt"), report <> "\n")
    assert one.calls_per_s > 0 and three.calls_per_s > 0
  end

  # -- helpers -----------------------------------------------------------------

  defp program_of(session) do
    {:ok, %{"programs" => [%{"program_id" => id} | _]}} =
      DSPyBridge.list_programs(pool(), session: session)

    id
  end

  # `n` executes at once, one process each, round-robin over the sessions.
  defp assert_answers_ok(sessions, programs, n) do
    sessions
    |> Stream.cycle()
    |> Enum.take(n)
    |> Enum.map(fn s ->
      Task.async(fn ->
        DSPyBridge.execute(pool(), programs[s], %{question: "q"}, session: s, timeout: 60_000)
      end)
    end)
    |> Task.await_many(90_000)
    |> Enum.each(&assert(match?({:ok, %{"outputs" => %{"answer" => "ok"}}}, &1), inspect(&1)))
  end

  defp await_member(peer, keys, tries \\ 1_500) do
    info = member_info(peer, pool())

    cond do
      info.keys == keys -> info
      tries == 0 -> flunk("the cut-off node did not settle: #{inspect(info.keys)}")
      true -> Process.sleep(20) && await_member(peer, keys, tries - 1)
    end
  end
end
