defmodule DSPyBridge.BenchTest do
  # Not async: it runs after the async modules, alone, so the figure it
  # prints is not skewed by other tests competing for the 2 cores.
  use ExUnit.Case, async: false

  import DSPyBridge.Test.Helpers

  alias DSPyBridge.Pool

  @moduletag :dspy
  @moduletag timeout: 120_000

  defp mock(name, extra), do: [model: "mock/#{name}", extra: Map.new(extra)]

  defp answer({:ok, %{"outputs" => %{"answer" => answer}}}), do: answer
  defp answer(other), do: flunk("expected an answer, got #{inspect(other)}")

  test "2,000 concurrent executes through a pool of 2 workers (mock LM, 50 ms latency)" do
    n = 2_000
    responses = Map.new(1..n, &{"q#{&1}", "a#{&1}"})
    pool = pool_name("bench")

    start_supervised!(
      {Pool,
       worker_opts(
         name: pool,
         size: 2,
         default_lm: mock("bench", responses: responses, latency_ms: 50)
       )}
    )

    {:ok, %{"program_id" => id}} = DSPyBridge.create_program(pool, "question -> answer")

    # warm both workers (DSPy import, adapter caches)
    for w <- 0..1, do: {:ok, _} = DSPyBridge.execute(pool, id, %{question: "q1"}, worker: w)

    started = System.monotonic_time(:millisecond)

    results =
      1..n
      |> Enum.map(fn i ->
        Task.async(fn ->
          {i, DSPyBridge.execute(pool, id, %{question: "q#{i}"}, timeout: 60_000)}
        end)
      end)
      |> Task.await_many(90_000)

    elapsed = System.monotonic_time(:millisecond) - started

    for {i, result} <- results, do: assert(answer(result) == "a#{i}")

    {:ok, stats} = DSPyBridge.stats(pool)
    per_worker = for w <- stats.workers, do: w.worker_stats["requests"]["execute_program"]

    IO.puts(
      "\n  #{n} concurrent executes, pool of 2, mock latency 50 ms: #{elapsed} ms " <>
        "(#{round(n * 1000 / max(elapsed, 1))} calls/s; per worker #{inspect(per_worker)})"
    )

    File.write!(Path.join(Mix.Project.build_path(), "bench_2000.txt"), "#{elapsed}\n")
  end
end
