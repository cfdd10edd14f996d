defmodule DSPyBridge.Test.Cluster do
  @moduledoc """
  Local peer nodes (OTP's `:peer`, on 127.0.0.1) running `:dspy_bridge` and
  a clustered pool of real workers, for the cluster tests. The functions
  marked "on the peer" run there (this module is compiled into `_build`, so
  a peer given the test node's code paths has it).
  """

  import ExUnit.Assertions

  alias DSPyBridge.{Cluster, Pool}

  @doc "Makes the test node distributed (starting EPMD) unless it already is."
  @spec ensure_distributed!() :: :ok
  def ensure_distributed! do
    unless Node.alive?() do
      epmd = System.find_executable("epmd") || raise "epmd not found"
      {_, 0} = System.cmd(epmd, ["-daemon"])
      name = :"dspy_cluster_test_#{System.unique_integer([:positive])}@127.0.0.1"
      {:ok, _} = Node.start(name, :longnames)
    end

    :ok
  end

  @doc """
  Starts a peer `name@127.0.0.1` with the test node's cookie and code, and
  `:dspy_bridge` started; returns `{peer, node}`. Its control channel is its
  standard I/O, not distribution, so the tests can cut its distribution
  (a partition) and still drive it. Stopped when the test ends.
  """
  @spec start_peer(atom()) :: {pid(), node()}
  def start_peer(name) do
    # a peer of the same name from a run just ended may still be going away
    await_name_free(Atom.to_charlist(name), 500)

    {:ok, peer, node} =
      :peer.start(%{
        name: name,
        host: ~c"127.0.0.1",
        longnames: true,
        connection: :standard_io,
        args: [~c"-setcookie", Atom.to_charlist(Node.get_cookie())]
      })

    ExUnit.Callbacks.on_exit(fn ->
      try do
        :peer.stop(peer)
      catch
        :exit, _ -> :ok
      end
    end)

    :ok = :peer.call(peer, :code, :add_paths, [:code.get_path()])
    :ok = :peer.call(peer, __MODULE__, :boot, [])
    true = Node.connect(node)
    {peer, node}
  end

  defp await_name_free(name, tries) do
    taken? =
      case :erl_epmd.names(~c"127.0.0.1") do
        {:ok, names} -> List.keymember?(names, name, 0)
        _ -> false
      end

    if taken? and tries > 0 do
      Process.sleep(20)
      await_name_free(name, tries - 1)
    end
  end

  @doc false
  # On the peer: quiet logs, then the application.
  def boot do
    Application.put_env(:logger, :level, :error)
    Application.put_env(:logger, :console, level: :error)
    {:ok, _} = Application.ensure_all_started(:dspy_bridge)
    :ok
  end

  @doc "Starts the clustered pool `pool` of `size` workers on the peer `node` (`extra`: more pool options)."
  @spec start_pool(node(), atom(), pos_integer(), keyword()) :: :ok
  def start_pool(node, pool, size, extra \\ []) do
    opts =
      DSPyBridge.Test.Helpers.worker_opts(
        Keyword.merge([name: pool, size: size, cluster: true, default_lm: [model: "mock"]], extra)
      )

    :ok = :erpc.call(node, __MODULE__, :start_pool_here, [opts], 60_000)
  end

  @doc false
  # On the peer: a pool that outlives the :erpc call that starts it.
  def start_pool_here(opts) do
    {:ok, pid} = Pool.start_link(opts)
    Process.unlink(pid)
    :ok
  end

  @doc "What the cluster member of `pool` on `node` knows (`DSPyBridge.Cluster.Member`)."
  @spec member_info(node() | pid(), atom()) :: map()
  def member_info(peer, pool) when is_pid(peer),
    do: :peer.call(peer, GenServer, :call, [Cluster.member_name(pool), :info])

  def member_info(node, pool),
    do: :erpc.call(node, GenServer, :call, [Cluster.member_name(pool), :info])

  @doc """
  Waits (polling, up to `timeout` ms) until the test node sees exactly
  `keys` for `pool` and the member on every node of `members` (a node, or a
  peer pid for a node cut off from this one) has settled on the same keys
  (its replays are done: it answers `:info` only between them) and has no
  session left to drain.

  Options: `gone:` nodes the test node must no longer be connected to, and
  `reconnect:` nodes it connects to again (each time it looks) once they are.
  """
  @spec await_keys(atom(), [Cluster.key()], [node() | pid()], keyword()) :: :ok
  def await_keys(pool, keys, members, opts \\ []) do
    deadline = System.monotonic_time(:millisecond) + Keyword.get(opts, :timeout, 30_000)
    do_await_keys(pool, Enum.sort(keys), members, opts, deadline)
  end

  defp do_await_keys(pool, keys, members, opts, deadline) do
    gone? = Enum.all?(Keyword.get(opts, :gone, []), &(&1 not in Node.list()))
    if gone?, do: Enum.each(Keyword.get(opts, :reconnect, []), &Node.connect/1)

    settled? =
      gone? and Cluster.keys(pool) == keys and
        Enum.all?(members, fn member ->
          try do
            match?(%{keys: ^keys, draining: 0}, member_info(member, pool))
          catch
            _, _ -> false
          end
        end)

    cond do
      settled? ->
        :ok

      System.monotonic_time(:millisecond) > deadline ->
        flunk(
          "the cluster did not settle on #{inspect(keys)}: test node sees " <>
            inspect(Cluster.keys(pool))
        )

      true ->
        Process.sleep(20)
        do_await_keys(pool, keys, members, opts, deadline)
    end
  end

  @doc """
  Has every `:telemetry` event emitted on `node` (through the stand-in
  `:telemetry` of test/support) sent to `pid` as `{:telemetry, event,
  measurements, metadata}`.
  """
  @spec forward_telemetry(node(), pid()) :: :ok
  def forward_telemetry(node, pid),
    do: :erpc.call(node, __MODULE__, :forward_telemetry_here, [pid])

  @doc false
  def forward_telemetry_here(pid) do
    forwarder = spawn(fn -> forward(pid) end)
    Process.register(forwarder, :dspy_bridge_telemetry_listener)
    true = DSPyBridge.Telemetry.refresh()
    :ok
  end

  defp forward(pid) do
    receive do
      message -> send(pid, message)
    end

    forward(pid)
  end

  @capitals %{"France?" => "Paris", "Peru?" => "Lima", "Japan?" => "Tokyo", "Italy?" => "Rome"}

  @doc "Questions and their right answers, as compile examples."
  @spec capitals() :: [map()]
  def capitals, do: for({q, a} <- @capitals, do: %{question: q, answer: a})

  @doc "The capitals as a compile's examples and validation set, two demos a program."
  def training,
    do: [trainset: capitals(), valset: capitals(), metric: "exact_match", options: %{k: 2}]

  @doc "`DSPyBridge.compile/4` of `program` with `training/0` and `opts`, from this process, which gets each progress event as `{:progress, pid the function ran in, event}`."
  def compile_with_progress(program, opts \\ []) do
    me = self()
    on_progress = fn event -> send(me, {:progress, self(), event}) end

    DSPyBridge.compile(
      pool(),
      program,
      :labeled_few_shot,
      training() ++ opts ++ [on_progress: on_progress]
    )
  end

  @doc """
  A mock LM's generator (a host function, so it runs on the owner node:
  this module is on every peer's code path) that answers right only when
  its prompt holds demos, which is what a few-shot optimizer adds.
  """
  @spec knows(map()) :: map()
  def knows(%{"inputs" => %{"question" => q}, "demos" => demos}) when demos > 0,
    do: %{answer: Map.get(@capitals, q, "?")}

  def knows(_args), do: %{answer: "I don't know"}

  @doc "The clustered pool of the cluster tests (a fixed name, so the rendezvous figures are the same in every run)."
  def pool, do: DSPyBridge.ClusterTestPool

  @doc "The worker keys of `[{node, size}]`."
  def worker_keys(nodes_sizes),
    do: for({node, size} <- nodes_sizes, i <- 0..(size - 1), do: {node, i})

  @doc "Starts a peer per `{name, size}` (in the calling process: a peer is linked to the process that starts it) and their pools, concurrently; waits until the cluster has settled. Returns `{[{peer, node, size}], keys}`."
  def peers(specs, pool_opts \\ []) do
    started = for {name, size} <- specs, do: Tuple.append(start_peer(name), size)

    started
    |> Enum.map(fn {_, node, size} ->
      Task.async(fn -> start_pool(node, pool(), size, pool_opts) end)
    end)
    |> Task.await_many(90_000)

    keys = worker_keys(for {_, node, size} <- started, do: {node, size})
    await_keys(pool(), keys, for({_, node, _} <- started, do: node))
    {started, keys}
  end

  @doc "What the mock LM of `set_up_session/1` answers in `session`."
  def answer_of(session), do: "the answer of #{session}"

  @doc "A session with its own mock LM (whose answer names the session) and a program `\"qa\"`: after a move, the same answer shows its records were replayed."
  def set_up_session(session) do
    lm = [model: "mock/#{session}", extra: %{responses: %{"who?" => answer_of(session)}}]
    {:ok, _} = DSPyBridge.configure_lm(pool(), lm, session: session)

    {:ok, _} =
      DSPyBridge.create_program(pool(), %{program_id: "qa", signature: "question -> answer"},
        session: session
      )

    :ok
  end

  @doc "`set_up_session/1` for every session, concurrently."
  def set_up_sessions(sessions) do
    sessions
    |> Enum.map(&Task.async(fn -> set_up_session(&1) end))
    |> Task.await_many(60_000)
  end

  @doc "The answer of the session's `\"qa\"` program, called from `node`."
  def execute(session, node \\ node()) do
    args = [pool(), "qa", %{question: "who?"}, [session: session, timeout: 15_000]]

    result =
      if node == node(),
        do: apply(DSPyBridge, :execute, args),
        else: :erpc.call(node, DSPyBridge, :execute, args, 20_000)

    case result do
      {:ok, %{"outputs" => %{"answer" => answer}}} -> answer
      other -> flunk("#{session}: expected an answer, got #{inspect(other)}")
    end
  end

  @doc "Asserts every session answers as `set_up_session/1` made it (concurrently, from this node)."
  def assert_answers(sessions) do
    sessions
    |> Enum.map(&Task.async(fn -> {&1, execute(&1)} end))
    |> Task.await_many(60_000)
    |> Enum.each(fn {session, answer} -> assert answer == answer_of(session) end)
  end

  @doc "The sessions a worker of `node` holds, as the worker itself lists them: `[{session, {node, index}}]`."
  def sessions_held(node, size) do
    for index <- 0..(size - 1),
        {:ok, %{"sessions" => list}} =
          :erpc.call(node, DSPyBridge, :request, [pool(), "list_sessions", %{}, [worker: index]]),
        %{"session_id" => id} <- list,
        id != "default",
        do: {id, {node, index}}
  end

  @doc "The answer of `program` in `session` to `question`."
  def ask(session, program, question) do
    assert {:ok, %{"outputs" => %{"answer" => answer}}} =
             DSPyBridge.execute(pool(), program, %{question: question},
               session: session,
               timeout: 15_000
             )

    answer
  end

  @doc "Waits until :pg on `node` shows exactly `keys` (its member may not have handled the change yet)."
  def await_pg_view(node, keys, tries \\ 1_500) do
    cond do
      :erpc.call(node, Cluster, :keys, [pool()]) == keys ->
        :ok

      tries == 0 ->
        flunk("#{node} still sees #{inspect(:erpc.call(node, Cluster, :keys, [pool()]))}")

      true ->
        Process.sleep(5) && await_pg_view(node, keys, tries - 1)
    end
  end

  @doc "Waits until `node`'s records hold `program_id` of `session` as an import (a replicated record arrives by a message of its own, which nothing here can await)."
  def await_import_record(node, session, program_id, tries \\ 1_500) do
    key = {:rec, session, :program, program_id}
    rows = :erpc.call(node, DSPyBridge.Pool.Store, :records, [pool()])

    case for({^key, _, _, _} = row <- rows, do: row) do
      [{_, _, "import_program", %{"document" => _}}] ->
        :ok

      other when tries == 0 ->
        flunk("#{node}: no import record of #{program_id}, but #{inspect(other, limit: 5)}")

      _ ->
        Process.sleep(5) && await_import_record(node, session, program_id, tries - 1)
    end
  end

  @doc "Waits until `fun` returns `{:ok, _}` (bounded): for state that comes by a message nothing here can await. Returns true, or flunks with the last answer."
  def await_ok(fun, tries \\ 1_500) do
    case fun.() do
      {:ok, _} -> true
      other when tries == 0 -> flunk("still #{inspect(other, limit: 8)}")
      _ -> Process.sleep(5) && await_ok(fun, tries - 1)
    end
  end

  @doc "Waits until a worker of `node` has a request in flight."
  def await_in_flight(node, tries \\ 500) do
    busy? =
      node
      |> :erpc.call(Pool, :workers, [pool()])
      |> Enum.any?(fn {_, pid, _, _} ->
        pid != nil and :erpc.call(node, DSPyBridge.Worker, :info, [pid]).in_flight > 0
      end)

    cond do
      busy? -> :ok
      tries == 0 -> flunk("no request in flight on #{node}")
      true -> Process.sleep(10) && await_in_flight(node, tries - 1)
    end
  end

  @doc false
  # On the peer: cuts this node off from every other (a wrong cookie keeps
  # it from reconnecting).
  def isolate do
    cookie = Node.get_cookie()
    :erlang.set_cookie(:partitioned)
    for node <- Node.list(), do: Node.disconnect(node)
    cookie
  end

  @doc false
  # On the peer: the partition heals.
  def heal(cookie, nodes) do
    :erlang.set_cookie(cookie)
    for node <- nodes, do: true = Node.connect(node)
    :ok
  end
end
