defmodule DSPyBridge.RecycleTest do
  use ExUnit.Case, async: true

  import DSPyBridge.Test.Helpers

  alias DSPyBridge.{Pool, Worker}

  @moduletag :dspy
  @moduletag timeout: 180_000

  # A pool of one worker recycled every 5 requests, its events sent here.
  defp start_pool(extra \\ []) do
    pool = pool_name("recycle")
    test = self()
    on_event = fn event -> send(test, {:event, event.name, event.os_pid}) end

    start_supervised!(
      {Pool, worker_opts([name: pool, size: 1, max_requests: 5, on_event: on_event] ++ extra)}
    )

    {:ok, _} = DSPyBridge.configure_lm(pool, model: "mock", extra: %{default: "x"})
    {:ok, %{"program_id" => id}} = DSPyBridge.create_program(pool, "question -> answer")
    [{0, pid, _os_pid, _}] = Pool.workers(pool)
    {pool, id, pid}
  end

  defp ready_os_pids(acc \\ MapSet.new()) do
    receive do
      {:event, "ready", os_pid} -> ready_os_pids(MapSet.put(acc, os_pid))
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
  end

  test "max_age_ms: the worker is recycled once old enough, and keeps serving" do
    {pool, id, pid} = start_pool(max_requests: nil, max_age_ms: 1_000)
    assert_receive {:event, "ready", first}, 60_000
    assert_receive {:event, "worker_recycled", second}, 60_000
    assert second != first

    assert {:ok, %{"outputs" => %{"answer" => "x"}}} =
             DSPyBridge.execute(pool, id, %{question: "q"}, timeout: 60_000)

    assert [{0, ^pid, _, _}] = Pool.workers(pool)
  end

  test "the options are validated" do
    for bad <- [max_requests: 0, max_age_ms: -1, max_requests: "5"] do
      assert_raise ArgumentError, fn ->
        Pool.start_link(worker_opts([name: pool_name("bad"), size: 1] ++ [bad]))
      end
    end
  end
end
