defmodule DSPyBridge.RecycleLoadTest do
  # The adoption issue's recycling promise at its own numbers: a worker
  # recycled every 50 requests serves 200 calls kept in flight over time (25 at
  # a time) with no call failing and no session lost. Real workers; each
  # session's own scripted answer shows its LM came back with every recycle.
  use ExUnit.Case, async: true

  import DSPyBridge.Test.Helpers

  alias DSPyBridge.{Pool, Worker}

  @moduletag :dspy
  @moduletag timeout: 240_000

  test "max_requests: 50, 200 calls in flight over time: every call answered, every session kept" do
    pool = pool_name("recycle_load")
    test = self()
    on_event = fn event -> send(test, {:event, event.name, event.data}) end

    start_supervised!(
      {Pool, worker_opts(name: pool, size: 1, max_requests: 50, on_event: on_event)}
    )

    sessions = for i <- 1..4, do: "tenant-#{i}"

    ids =
      Map.new(sessions, fn s ->
        lm = [model: "mock", extra: %{default: "answer for #{s}"}]
        {:ok, _} = DSPyBridge.configure_lm(pool, lm, session: s)

        {:ok, %{"program_id" => id}} =
          DSPyBridge.create_program(pool, "question -> answer", session: s)

        {s, id}
      end)

    results =
      1..200
      |> Task.async_stream(
        fn i ->
          s = Enum.at(sessions, rem(i, 4))

          {s,
           DSPyBridge.execute(pool, ids[s], %{question: "q#{i}"}, session: s, timeout: 120_000)}
        end,
        max_concurrency: 25,
        timeout: 180_000
      )
      |> Enum.map(fn {:ok, result} -> result end)

    for {s, result} <- results do
      assert {:ok, %{"outputs" => %{"answer" => answer}}} = result
      assert answer == "answer for #{s}"
    end

    [{0, pid, _, _}] = Pool.workers(pool)
    # 200 calls plus the set-up's 8: at least 4 recycles at 50 each
    assert Worker.info(pid).recycles >= 4
    assert_received {:event, "worker_recycled", %{"reason" => "max_requests"}}

    # the sessions and their programs are all still there
    for s <- sessions do
      assert {:ok, %{"programs" => [%{"program_id" => id}]}} =
               DSPyBridge.list_programs(pool, session: s)

      assert id == ids[s]
    end
  end
end
