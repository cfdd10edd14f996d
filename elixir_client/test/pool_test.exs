defmodule DSPyBridge.PoolTest do
  # The pool with real workers, control commands only (no DSPy needed).
  use ExUnit.Case, async: true

  import DSPyBridge.Test.Helpers

  alias DSPyBridge.{Error, Event, Pool, Worker}

  defp start_pool(extra \\ []) do
    name = pool_name()
    opts = worker_opts(Keyword.merge([name: name, size: 2], extra))
    start_supervised!({Pool, opts})
    name
  end

  defp os_pids(pool), do: for({_, _, os_pid, _} <- Pool.workers(pool), do: os_pid)

  test "workers start concurrently and are all ready when start_link returns" do
    pool = start_pool(size: 3)
    workers = Pool.workers(pool)
    assert length(workers) == 3

    assert Enum.all?(workers, fn {_, pid, os_pid, status} ->
             is_pid(pid) and os_alive?(os_pid) and status == :ready
           end)

    {:ok, stats} = DSPyBridge.stats(pool)
    assert stats.size == 3
    assert Enum.all?(stats.workers, &(&1.status == :ready and is_map(&1.worker_stats)))
  end

  test "with await_ready: false, start_link returns at once and early calls wait for ready" do
    pool = start_pool(await_ready: false)
    assert {:ok, %{"status" => "ok"}} = DSPyBridge.ping(pool, timeout: 15_000)
    assert {:ok, %{"status" => "ok"}} = DSPyBridge.ping(pool, session: "early", timeout: 15_000)
  end

  test "a pool whose interpreter cannot be started fails to start" do
    Process.flag(:trap_exit, true)

    assert {:error, _} =
             Pool.start_link(name: pool_name(), size: 2, python: "/nonexistent/python3")
  end

  test "the :on_event callback sees every worker's ready event" do
    parent = self()
    pool = start_pool(on_event: fn event -> send(parent, {:callback, event}) end)

    for index <- [0, 1] do
      assert_receive {:callback, %Event{name: "ready", pool: ^pool, worker: ^index, data: data}}
      assert data["protocol_version"] == 1
    end
  end

  test ":telemetry events are emitted when :telemetry is loaded" do
    # test/support defines a stand-in :telemetry module
    Process.register(self(), :dspy_bridge_telemetry_listener)
    assert DSPyBridge.Telemetry.refresh()
    pool = start_pool(size: 1)
    {:ok, _} = DSPyBridge.ping(pool)

    assert_receive {:telemetry, [:dspy_bridge, :request, :stop], %{duration: d},
                    %{command: "ping", outcome: :ok, pool: ^pool, worker: 0}}

    assert is_integer(d) and d > 0

    {:error, _} = DSPyBridge.request(pool, "no_such_command")

    assert_receive {:telemetry, [:dspy_bridge, :request, :stop], _,
                    %{command: "no_such_command", outcome: :unknown_command, pool: ^pool}}

    assert_received {:telemetry, [:dspy_bridge, :event], %{count: 1},
                     %{event: %Event{name: "ready", pool: ^pool}}}
  end

  test "session affinity: a session's calls always reach the same worker" do
    pool = start_pool()

    for session <- ["alpha", "beta", "gamma", "delta"] do
      {_pid, expected} = Pool.worker_for(pool, session)

      os_pids =
        for _ <- 1..10 do
          {:ok, %{"pid" => os_pid}} = DSPyBridge.ping(pool, session: session)
          os_pid
        end

      assert Enum.uniq(os_pids) == [expected]
    end

    [a] = sessions_on(0, 2, 1)
    [b] = sessions_on(1, 2, 1)
    assert {:ok, %{"pid" => pa}} = DSPyBridge.ping(pool, session: a)
    assert {:ok, %{"pid" => pb}} = DSPyBridge.ping(pool, session: b)
    assert pa != pb
  end

  test "calls without a session spread over the workers by load" do
    pool = start_pool()

    results =
      1..40
      |> Enum.map(fn _ -> Task.async(fn -> DSPyBridge.request(pool, "sleep", %{ms: 100}) end) end)
      |> Task.await_many()

    assert Enum.all?(results, &match?({:ok, %{"slept_ms" => 100}}, &1))

    {:ok, stats} = DSPyBridge.stats(pool)
    counts = for w <- stats.workers, do: w.worker_stats["requests"]["sleep"] || 0
    assert Enum.sum(counts) == 40
    assert Enum.all?(counts, &(&1 >= 10)), "unbalanced: #{inspect(counts)}"
  end

  test "a killed worker is restarted; callers in flight get :worker_exited at once" do
    pool = start_pool()
    DSPyBridge.subscribe(pool)
    [session] = sessions_on(0, 2, 1)
    {_, os_pid} = Pool.worker_for(pool, session)

    {worker, _} = Pool.worker_for(pool, session)
    {:ok, request} = Worker.send_request(worker, "sleep", %{ms: 10_000}, timeout: 20_000)
    assert %{in_flight: 1} = Worker.info(worker)
    kill9(os_pid)

    assert {:error, %Error{type: :worker_exited}} = Worker.await_response(request, 3_000)

    assert_receive {:dspy_bridge_event,
                    %Event{name: "worker_exited", os_pid: ^os_pid, worker: 0}},
                   2_000

    assert_receive {:dspy_bridge_event, %Event{name: "ready", worker: 0, os_pid: new_os_pid}},
                   10_000

    assert new_os_pid != os_pid

    # the session now reaches the new worker
    assert {:ok, %{"pid" => ^new_os_pid}} = DSPyBridge.ping(pool, session: session)
    {:ok, stats} = DSPyBridge.stats(pool)
    assert Enum.at(stats.workers, 0).restarts == 1
  end

  test "calls made while a worker restarts wait for it instead of failing" do
    pool = start_pool()
    [session] = sessions_on(1, 2, 1)
    {_, os_pid} = Pool.worker_for(pool, session)
    kill9(os_pid)
    # whichever moment this lands in (dead, restarting, ready), it gets served
    results = for _ <- 1..20, do: DSPyBridge.ping(pool, session: session, timeout: 15_000)

    assert Enum.all?(results, fn
             {:ok, %{"status" => "ok"}} -> true
             {:error, %Error{type: :worker_exited}} -> true
             _ -> false
           end)

    assert {:ok, %{"pid" => new}} = DSPyBridge.ping(pool, session: session)
    assert new != os_pid
  end

  test "killing a worker while calls stream in: every call is answered promptly" do
    pool = start_pool()
    [session] = sessions_on(0, 2, 1)
    payload = String.duplicate("x", 256 * 1024)

    for _round <- 1..2 do
      {_, os_pid} = Pool.worker_for(pool, session)

      tasks =
        for _ <- 1..4 do
          Task.async(fn ->
            for _ <- 1..30 do
              # big frames make writes to a dying process fail (EPIPE)
              {micros, result} =
                :timer.tc(fn ->
                  DSPyBridge.request(pool, "echo", %{value: payload},
                    session: session,
                    timeout: 10_000
                  )
                end)

              {div(micros, 1000), result}
            end
          end)
        end

      kill9(os_pid)
      results = tasks |> Task.await_many(60_000) |> List.flatten()

      for {ms, result} <- results do
        assert match?({:ok, ^payload}, result) or
                 match?({:error, %Error{type: :worker_exited}}, result),
               "unexpected #{inspect(result)}"

        # waiting for a restart is fine; waiting for a timeout is not
        assert ms < 8_000
      end

      assert {:ok, %{"pid" => new_pid}} = DSPyBridge.ping(pool, session: session)
      assert new_pid != os_pid
    end
  end

  test "no orphan OS processes after the pool stops" do
    name = pool_name()
    {:ok, sup} = Pool.start_link(worker_opts(name: name, size: 3))
    pids = os_pids(name)
    assert Enum.all?(pids, &os_alive?/1)
    Process.unlink(sup)
    started = System.monotonic_time(:millisecond)
    :ok = Pool.stop(name)
    IO.puts("\n  pool of 3 stopped in #{System.monotonic_time(:millisecond) - started} ms")
    assert Enum.reject(pids, &os_alive?/1) == pids
  end

  test "subscribers get events once, are not linked to the pool, and can unsubscribe" do
    name = pool_name()
    {:ok, sup} = Pool.start_link(worker_opts(name: name, size: 1))
    Process.unlink(sup)
    :ok = DSPyBridge.subscribe(name)
    :ok = DSPyBridge.subscribe(name)
    [{0, _, os_pid, _}] = Pool.workers(name)
    kill9(os_pid)
    assert_receive {:dspy_bridge_event, %Event{name: "worker_exited", os_pid: ^os_pid}}, 5_000
    assert_receive {:dspy_bridge_event, %Event{name: "ready", source: :worker}}, 10_000
    refute_received {:dspy_bridge_event, %Event{name: "worker_exited"}}
    :ok = DSPyBridge.unsubscribe(name)
    :ok = Pool.stop(name)
    # still alive (not linked to the pool's processes), nothing more delivered
    refute_received {:dspy_bridge_event, _}
  end

  test "no orphan OS processes after the pool's owner is killed" do
    name = pool_name()
    parent = self()

    owner =
      spawn(fn ->
        {:ok, _} = Pool.start_link(worker_opts(name: name, size: 2))
        send(parent, {:started, os_pids(name)})
        Process.sleep(:infinity)
      end)

    assert_receive {:started, pids}, 20_000
    sup = Process.whereis(name)
    ref = Process.monitor(sup)
    Process.exit(owner, :kill)
    assert_receive {:DOWN, ^ref, :process, ^sup, _}, 15_000
    # the pool terminated its workers, which waited for their OS processes
    assert Enum.reject(pids, &os_alive?/1) == pids
  end

  test "no orphan OS processes after the whole BEAM is killed with SIGKILL" do
    ebin = Path.join(Mix.Project.build_path(), "lib/dspy_bridge/ebin")

    script = """
    {:ok, _} = DSPyBridge.Pool.start_link(name: :beam_kill_pool, size: 2, log_level: "warning")
    pids = for {_, _, os_pid, _} <- DSPyBridge.Pool.workers(:beam_kill_pool), do: os_pid
    IO.puts("PIDS " <> Enum.join([System.pid() | Enum.map(pids, &Integer.to_string/1)], " "))
    Process.sleep(:infinity)
    """

    port =
      Port.open({:spawn_executable, System.find_executable("elixir")}, [
        :binary,
        :exit_status,
        {:line, 10_000},
        args: ["-pa", ebin, "-e", script]
      ])

    [beam | worker_pids] = read_pids(port) |> Enum.map(&String.to_integer/1)
    assert Enum.all?(worker_pids, &os_alive?/1)
    kill9(beam)
    assert_receive {^port, {:exit_status, _}}, 5_000

    for pid <- worker_pids do
      waited = await_os_exit(pid, 3_000)
      IO.puts("\n  worker #{pid} exited #{waited} ms after its BEAM was killed")
    end
  end

  defp read_pids(port) do
    receive do
      {^port, {:data, {:eol, "PIDS " <> pids}}} -> String.split(pids)
      {^port, {:data, _}} -> read_pids(port)
      {^port, {:exit_status, status}} -> flunk("child BEAM exited with #{status}")
    after
      30_000 -> flunk("child BEAM did not report its workers")
    end
  end

  test "overflow: :error makes the pool answer :overloaded instead of queueing" do
    pool = start_pool(size: 1, max_in_flight: 2, overflow: :error)
    [{_, worker, _, _}] = Pool.workers(pool)
    requests = for _ <- 1..2, do: Worker.send_request(worker, "sleep", %{ms: 300}) |> elem(1)
    assert %{in_flight: 2} = Worker.info(worker)
    assert {:error, %Error{type: :overloaded}} = DSPyBridge.request(pool, "sleep", %{ms: 1})
    assert [{:ok, _}, {:ok, _}] = Enum.map(requests, &Worker.await_response/1)
  end

  test "a request over the frame limit fails at once through the pool and releases its load" do
    pool =
      start_pool(size: 1, extra_args: ["--enable-test-commands", "--max-frame-bytes", "4096"])

    big = String.duplicate("x", 5_000)

    assert {:error, %Error{type: :limit_exceeded, details: %{"max_frame_bytes" => 4096}}} =
             DSPyBridge.request(pool, "echo", %{value: big}, timeout: 600_000)

    # the least-loaded routing does not count the refused call as in flight
    %{load: load} = DSPyBridge.Pool.Store.config(pool)
    assert :atomics.get(load, 1) == 0
    assert {:ok, "small"} = DSPyBridge.request(pool, "echo", %{value: "small"})
  end

  describe "a worker whose DSPy engine fails to load" do
    setup :tmp_dir_setup

    test "is replaced by the pool's supervisor; calls get answers, not hangs", %{base: base} do
      parent = self()
      name = pool_name("engine")

      # Every replacement fails too, so the pool restarts its worker again and
      # again: it is a pool of its own, with room for restarts, stopped at the
      # end, and not restarted should it give up anyway.
      opts =
        broken_engine_opts(base,
          name: name,
          size: 1,
          max_restarts: 1_000,
          max_seconds: 1,
          on_event: fn event -> send(parent, {:pool_event, event}) end
        )

      start_supervised!({Pool, opts}, restart: :temporary)

      assert_receive {:pool_event,
                      %Event{name: "engine_failed", worker: 0, os_pid: first, data: data}},
                     30_000

      assert data["error"]["type"] == "engine_unavailable"
      assert data["error"]["message"] =~ "broken dspy for the test"

      assert_receive {:pool_event, %Event{name: "ready", worker: 0, os_pid: second}}
                     when second != first,
                     30_000

      # a call that needs DSPy is answered by whichever worker it reaches
      assert {:error, %Error{type: type, retryable: true}} =
               DSPyBridge.request(name, "configure_lm", %{model: "mock"}, timeout: 600_000)

      assert type in [:engine_unavailable, :worker_exited]

      :ok = stop_supervised(name)
      refute os_alive?(first)
      refute os_alive?(second)
    end
  end

  test "a session_evicted event forgets only that worker's own sessions (a fake worker)" do
    alias DSPyBridge.MsgPack
    alias DSPyBridge.Pool.Store

    name = pool_name("evict")
    start_supervised!({Pool, fake_worker_opts(name: name, size: 2)})
    %{table: table} = Store.config(name)
    [mine] = sessions_on(0, 2, 1)
    [theirs] = sessions_on(1, 2, 1)

    for session <- [mine, theirs],
        do: Store.apply_record(table, {:put_lm, session, %{"model" => "mock"}}, {:ok, %{}})

    assert %{sessions: 2} = Store.counts(table)

    evicted =
      for session <- [theirs, mine] do
        %MsgPack.Bin{
          data: MsgPack.encode!(%{"event" => "session_evicted", "session_id" => session})
        }
      end

    # worker 0 cannot evict worker 1's session, only its own
    assert {:ok, "emitted"} = DSPyBridge.request(name, "emit", %{frames: evicted}, worker: 0)

    assert [{{:rec, ^theirs, :lm, nil}, _, _, _}] =
             :ets.match_object(table, {{:rec, :_, :_, :_}, :_, :_, :_})

    [{0, worker, _, _}, _] = Pool.workers(name)
    assert %{unexpected_frames: 1} = Worker.info(worker)
  end

  test "a replay command over the frame limit is skipped, not sent: the restarted worker still serves" do
    pool =
      start_pool(size: 1, extra_args: ["--enable-test-commands", "--max-frame-bytes", "4096"])

    DSPyBridge.subscribe(pool)
    %{table: table} = DSPyBridge.Pool.Store.config(pool)
    # a record too big for this worker (as if the limit had been raised and lowered)
    big = %{"model" => "mock", "extra" => %{"default" => String.duplicate("x", 5_000)}}
    DSPyBridge.Pool.Store.apply_record(table, {:put_lm, "big", big}, {:ok, %{}})
    [{0, _, os_pid, _}] = Pool.workers(pool)
    kill9(os_pid)

    # sent, it would be answered `invalid_frame` with `id: nil` and the replay
    # would never finish
    assert_receive {:dspy_bridge_event,
                    %Event{name: "replayed", data: %{"commands" => 1, "failed" => 1}}},
                   20_000

    assert {:ok, %{"status" => "ok", "pid" => new}} = DSPyBridge.ping(pool)
    assert new != os_pid
  end
end
