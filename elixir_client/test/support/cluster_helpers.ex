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
