defmodule DSPyBridge.RecycleTest do
  use ExUnit.Case, async: true

  import DSPyBridge.Test.Helpers

  alias DSPyBridge.{Options, Pool, Worker}
  alias DSPyBridge.Worker.Memory

  doctest Memory

  @moduletag :dspy
  @moduletag timeout: 180_000

  # A pool of one worker recycled every 5 requests (unless `extra` says
  # otherwise), its events sent here.
  defp start_pool(extra \\ []) do
    pool = pool_name("recycle")
    test = self()
    on_event = fn event -> send(test, {:event, event.name, event.os_pid, event.data}) end

    start_supervised!(
      {Pool,
       worker_opts(
         Keyword.merge([name: pool, size: 1, max_requests: 5, on_event: on_event], extra)
       )}
    )

    {:ok, _} = DSPyBridge.configure_lm(pool, model: "mock", extra: %{default: "x"})
    {:ok, %{"program_id" => id}} = DSPyBridge.create_program(pool, "question -> answer")
    [{0, pid, _os_pid, _}] = Pool.workers(pool)
    {pool, id, pid}
  end

  defp ready_os_pids(acc \\ MapSet.new()) do
    receive do
      {:event, "ready", os_pid, _} -> ready_os_pids(MapSet.put(acc, os_pid))
    after
      0 -> acc
    end
  end

  defp os_pid(pool) do
    [{0, _pid, os_pid, _status}] = Pool.workers(pool)
    os_pid
  end

  test "max_requests: 20 sequential executes succeed across at least 3 OS processes" do
    {pool, id, pid} = start_pool()

    {answers, os_pids} =
      for i <- 1..20, reduce: {[], MapSet.new()} do
        {answers, os_pids} ->
          result = DSPyBridge.execute(pool, id, %{question: "q#{i}"}, timeout: 60_000)
          assert {:ok, %{"outputs" => %{"answer" => answer}}} = result
          {[answer | answers], MapSet.put(os_pids, os_pid(pool))}
      end

    assert Enum.uniq(answers) == ["x"]
    assert MapSet.size(os_pids) >= 3, "OS pids seen: #{inspect(os_pids)}"
    # recycled in place: the same Erlang process, no restart, no caller failed
    assert [{0, ^pid, _, _}] = Pool.workers(pool)
    info = Worker.info(pid)
    assert info.recycles >= 3
    assert info.status in [:ready, :recycling, :starting, :replaying]

    # the old OS processes are gone: each was awaited before its successor started
    for os <- MapSet.delete(os_pids, info.os_pid), do: refute(os_alive?(os))
  end

  test "max_requests: 20 concurrent executes all succeed" do
    {pool, id, pid} = start_pool()

    results =
      1..20
      |> Enum.map(fn i ->
        Task.async(fn -> DSPyBridge.execute(pool, id, %{question: "q#{i}"}, timeout: 90_000) end)
      end)
      |> Task.await_many(120_000)

    for result <- results, do: assert({:ok, %{"outputs" => %{"answer" => "x"}}} = result)
    assert [{0, ^pid, _, _}] = Pool.workers(pool)
    assert Worker.info(pid).recycles >= 3
    assert MapSet.size(ready_os_pids()) >= 3
    assert_received {:event, "worker_recycled", _, %{"reason" => "max_requests"}}
  end

  test "max_age_ms: the worker is recycled once old enough, and keeps serving" do
    {pool, id, pid} = start_pool(max_requests: nil, max_age_ms: 1_000)
    assert_receive {:event, "ready", first, _}, 60_000
    assert_receive {:event, "worker_recycled", second, recycled}, 60_000
    assert second != first
    assert recycled == %{"os_pid" => second, "previous_os_pid" => first, "reason" => "max_age_ms"}

    assert {:ok, %{"outputs" => %{"answer" => "x"}}} =
             DSPyBridge.execute(pool, id, %{question: "q"}, timeout: 60_000)

    assert [{0, ^pid, _, _}] = Pool.workers(pool)
  end

  # Calls `execute` with each of `programs` (`{program id, session}`) over
  # and over, each answer sent to `test`, until sent `:stop`.
  defp call_until_stopped(pool, programs, test) do
    receive do
      :stop -> :ok
    after
      0 ->
        for {id, session} <- programs do
          opts = [timeout: 60_000] ++ if(session, do: [session: session], else: [])
          send(test, {:answer, session, DSPyBridge.execute(pool, id, %{question: "q"}, opts)})
        end

        call_until_stopped(pool, programs, test)
    end
  end

  test "max_memory_mb: a worker over the limit is recycled, its sessions replayed, and no call fails" do
    # every Python worker is over 1 MiB: it is recycled at each check once ready
    {pool, id, pid} = start_pool(max_requests: nil, max_memory_mb: 1, memory_check_ms: 100)

    {:ok, _} =
      DSPyBridge.configure_lm(pool, [model: "mock", extra: %{default: "y"}], session: "s")

    {:ok, %{"program_id" => sid}} =
      DSPyBridge.create_program(pool, "question -> answer", session: "s")

    # the recycles counted below all come after the session's program was created
    flush_recycled()
    test = self()
    caller = spawn_link(fn -> call_until_stopped(pool, [{id, nil}, {sid, "s"}], test) end)

    recycles =
      for _ <- 1..3 do
        assert_receive {:event, "worker_recycled", os_pid, recycled}, 60_000
        assert %{"os_pid" => ^os_pid, "reason" => "max_memory_mb"} = recycled
        # awaited before its successor started
        refute os_alive?(recycled["previous_os_pid"])
        os_pid
      end

    # a call made after the last recycle, so answered by a replayed worker
    assert {:ok, %{"outputs" => %{"answer" => "y"}}} =
             DSPyBridge.execute(pool, sid, %{question: "q"}, session: "s", timeout: 60_000)

    ref = Process.monitor(caller)
    send(caller, :stop)
    assert_receive {:DOWN, ^ref, :process, ^caller, _}, 60_000

    answers = answers()
    assert Map.keys(answers) |> Enum.sort() == [nil, "s"]
    assert Enum.uniq(answers[nil]) == [{:ok, "x"}]
    assert Enum.uniq(answers["s"]) == [{:ok, "y"}]
    assert length(Enum.uniq(recycles)) == 3
    assert [{0, ^pid, _, _}] = Pool.workers(pool)
    assert Worker.info(pid).recycles >= 3
  end

  defp flush_recycled do
    receive do
      {:event, "worker_recycled", _, _} -> flush_recycled()
    after
      0 -> :ok
    end
  end

  # the answers sent by call_until_stopped/3, by session: `{:ok, answer}` or the error
  defp answers(acc \\ %{}) do
    receive do
      {:answer, session, result} ->
        answer =
          case result do
            {:ok, %{"outputs" => %{"answer" => answer}}} -> {:ok, answer}
            error -> error
          end

        answers(Map.update(acc, session, [answer], &[answer | &1]))
    after
      0 -> acc
    end
  end

  test "max_memory_mb: off by default, and a worker under the limit is not recycled" do
    refute Keyword.has_key?(Options.validate!([], :worker), :max_memory_mb)
    assert Options.default(:worker, :memory_check_ms) == 5_000

    {pool, id, pid} = start_pool(max_requests: nil, max_memory_mb: 1_000_000, memory_check_ms: 1)
    [{0, _pid, os_pid, _}] = Pool.workers(pool)

    # checks run every ms between these calls; none finds the worker over 1,000,000 MiB
    for _ <- 1..50 do
      assert {:ok, _} = DSPyBridge.execute(pool, id, %{question: "q"}, timeout: 60_000)
    end

    assert %{recycles: 0, os_pid: ^os_pid} = Worker.info(pid)
    refute_received {:event, "worker_recycled", _, _}
  end

  test "RSS parsing: VmRSS in kB from /proc/<pid>/status" do
    status = """
    Name:\tpython3
    State:\tS (sleeping)
    VmPeak:\t  912340 kB
    VmHWM:\t  104000 kB
    VmRSS:\t   98765 kB
    RssAnon:\t   60000 kB
    Threads:\t3
    """

    assert Memory.parse_status(status) == {:ok, 98_765}
    # a zombie's status has no Vm* lines; nor has a kernel thread's
    assert Memory.parse_status("Name:\tpython3\nState:\tZ (zombie)\nThreads:\t1\n") == :error
    assert Memory.parse_status("VmRSS:\t  garbage kB\n") == :error
    assert Memory.parse_status("") == :error

    # the BEAM's own, and a process that is gone
    assert Memory.supported?()
    assert {:ok, kb} = Memory.rss_kb(String.to_integer(System.pid()))
    assert kb > 1_024
    assert Memory.rss_kb(0) == :error
  end

  test "the options are validated" do
    bad = [max_memory_mb: 0, max_memory_mb: 1.5, memory_check_ms: 0, memory_check_ms: "5"]

    for bad <- [max_requests: 0, max_age_ms: -1, max_requests: "5"] ++ bad do
      assert_raise ArgumentError, fn ->
        Pool.start_link(worker_opts([name: pool_name("bad"), size: 1] ++ [bad]))
      end
    end
  end
end
