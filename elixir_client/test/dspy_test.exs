defmodule DSPyBridge.DSPyTest do
  # The DSPy commands through the pool, on the worker's built-in mock LM.
  use ExUnit.Case, async: true

  import DSPyBridge.Test.Helpers

  alias DSPyBridge.{Error, Event, Pool}

  @moduletag :dspy
  @moduletag timeout: 120_000

  defp start_pool(extra \\ []) do
    name = pool_name("dspy")
    start_supervised!({Pool, worker_opts(Keyword.merge([name: name, size: 2], extra))})
    name
  end

  defp mock(name, extra), do: [model: "mock/#{name}", extra: Map.new(extra)]

  defp answer({:ok, %{"outputs" => %{"answer" => answer}}}), do: answer
  defp answer(other), do: flunk("expected an answer, got #{inspect(other)}")

  test "evaluate scores a devset with a named metric, failures reported per example" do
    pool = start_pool()
    s = "eval"

    {:ok, _} =
      DSPyBridge.configure_lm(
        pool,
        mock("eval", responses: %{"France?" => "Paris", "Peru?" => "Quito"}),
        session: s
      )

    {:ok, _} =
      DSPyBridge.create_program(pool, [signature: "question -> answer", program_id: "qa"],
        session: s
      )

    devset = [%{question: "France?", answer: "paris"}, %{question: "Peru?", answer: "Lima"}]

    assert {:ok, %{"total" => 2, "passed" => 1, "score" => 0.5} = result} =
             DSPyBridge.evaluate(pool, "qa", devset, "exact_match",
               session: s,
               per_example: true
             )

    assert [%{"index" => 1, "outputs" => %{"answer" => "Quito"}}] = result["failed_examples"]
    assert length(result["per_example"]) == 2

    assert {:error, %Error{type: :invalid_args}} =
             DSPyBridge.evaluate(pool, "qa", devset, %{name: "bleu"}, session: s)

    assert_raise ArgumentError, ~r/max_concurency/, fn ->
      DSPyBridge.evaluate(pool, "qa", devset, "f1", session: s, max_concurency: 2)
    end
  end

  test "happy path: configure, create, execute, inspect, export/import, usage, delete" do
    pool = start_pool(default_lm: mock("default", default: "default answer"))
    s = "happy"

    assert {:ok, configured} =
             DSPyBridge.configure_lm(pool, mock("qa", responses: %{"What is 2+2?" => "4"}),
               session: s
             )

    assert is_map(configured)
    refute inspect(configured) =~ "api_key\" => \"sk"

    # "qa" carries its own LM, so its export does too
    assert {:ok, %{"program_id" => "qa", "session_id" => ^s, "program_type" => "predict"}} =
             DSPyBridge.create_program(
               pool,
               [
                 signature: "question -> answer",
                 program_id: "qa",
                 lm: mock("qa-own", responses: %{"What is 2+2?" => "four"})
               ],
               session: s
             )

    assert {:ok, result} = DSPyBridge.execute(pool, "qa", %{question: "What is 2+2?"}, session: s)
    assert result["outputs"]["answer"] == "four"
    assert is_map(result["usage"]) or is_list(result["usage"])
    assert is_binary(result["lm"])

    {:ok, cot} =
      DSPyBridge.create_program(
        pool,
        %{signature: "question -> answer", program_type: "chain_of_thought"},
        session: s
      )

    {:ok, %{"outputs" => outputs}} =
      DSPyBridge.execute(pool, cot["program_id"], %{question: "What is 2+2?"}, session: s)

    assert outputs["answer"] == "4"
    assert Map.has_key?(outputs, "reasoning")

    assert {:ok, %{"program_id" => "qa"}} = DSPyBridge.get_program(pool, "qa", session: s)
    assert {:ok, listed} = DSPyBridge.list_programs(pool, session: s)
    assert inspect(listed) =~ "qa"

    # the default session uses the pool's default LM, on every worker
    {:ok, %{"program_id" => shared}} = DSPyBridge.create_program(pool, "question -> answer")

    for worker <- 0..1 do
      assert answer(DSPyBridge.execute(pool, shared, %{question: "x"}, worker: worker)) ==
               "default answer"
    end

    # export from one session, import into another
    {:ok, doc} = DSPyBridge.export_program(pool, "qa", session: s)

    {:ok, %{"program_id" => "copy"}} =
      DSPyBridge.import_program(pool, doc, session: "other", program_id: "copy")

    assert answer(DSPyBridge.execute(pool, "copy", %{question: "What is 2+2?"}, session: "other")) ==
             "four"

    assert {:ok, usage} = DSPyBridge.get_usage(pool, session: s)
    assert usage != %{}

    assert {:ok, _} = DSPyBridge.delete_program(pool, "qa", session: s)

    assert {:error, %Error{type: :not_found}} =
             DSPyBridge.execute(pool, "qa", %{question: "x"}, session: s)

    # program ids are scoped to their session
    assert {:error, %Error{type: :not_found}} =
             DSPyBridge.get_program(pool, cot["program_id"], session: "other")

    assert {:ok, _} = DSPyBridge.end_session(pool, s)

    assert {:error, %Error{type: :not_found}} =
             DSPyBridge.get_program(pool, cot["program_id"], session: s)

    {:ok, stats} = DSPyBridge.stats(pool)
    assert stats.programs >= 1
  end

  test "the default session lives on every worker; pool-wide calls" do
    pool = start_pool(default_lm: mock("default", default: "shared answer"))

    # no program id: the client picks one so every worker has the same
    {:ok, %{"program_id" => id}} = DSPyBridge.create_program(pool, "question -> answer")
    assert is_binary(id)

    for w <- 0..1 do
      assert {:ok, %{"program_id" => ^id}} = DSPyBridge.get_program(pool, id, worker: w)
      assert answer(DSPyBridge.execute(pool, id, %{question: "q"}, worker: w)) == "shared answer"
    end

    # usage of the default session, summed over the workers
    {:ok, usage} = DSPyBridge.get_usage(pool)
    assert usage["total"]["requests"] == 2
    assert usage["models"]["mock/default"]["requests"] == 2
    {:ok, _} = DSPyBridge.reset_usage(pool)
    {:ok, usage} = DSPyBridge.get_usage(pool)
    assert usage["total"]["requests"] == 0

    # sessions of every worker
    [a] = sessions_on(0, 2, 1, "ls")
    [b] = sessions_on(1, 2, 1, "ls")

    for s <- [a, b],
        do: {:ok, _} = DSPyBridge.create_program(pool, "question -> answer", session: s)

    {:ok, %{"sessions" => sessions}} = DSPyBridge.list_sessions(pool)
    by_id = Map.new(sessions, &{&1["session_id"], &1})
    assert by_id[a]["worker"] == 0 and by_id[a]["programs"] == 1
    assert by_id[b]["worker"] == 1
    {:ok, %{"sessions" => [only]}} = DSPyBridge.list_sessions(pool, session: b)
    assert only["session_id"] == b

    # the cache is configured on every worker
    assert {:ok, %{"enable_memory" => true}} =
             DSPyBridge.configure_cache(pool, enable_memory: true, memory_max_entries: 100)

    {:ok, stats} = DSPyBridge.stats(pool)
    assert stats.sessions == 2

    # deleting a default-session program deletes it everywhere
    {:ok, _} = DSPyBridge.delete_program(pool, id)

    for w <- 0..1 do
      assert {:error, %Error{type: :not_found}} = DSPyBridge.get_program(pool, id, worker: w)
    end

    # creating it again where it already exists everywhere is an error
    {:ok, _} =
      DSPyBridge.create_program(pool, signature: "question -> answer", program_id: "twice")

    assert {:error, %Error{type: :already_exists}} =
             DSPyBridge.create_program(pool, signature: "question -> answer", program_id: "twice")
  end

  test "a session evicted by the worker's idle TTL is forgotten by the pool too" do
    pool =
      start_pool(size: 1, extra_args: ["--enable-test-commands", "--session-idle-ttl-s", "0.3"])

    DSPyBridge.subscribe(pool)
    {:ok, _} = DSPyBridge.create_program(pool, "question -> answer", session: "idle")
    assert {:ok, %{sessions: 1, programs: 1}} = DSPyBridge.stats(pool, worker_stats: false)

    assert_receive {:dspy_bridge_event,
                    %Event{
                      name: "session_evicted",
                      source: :worker,
                      data: %{"session_id" => "idle"}
                    }},
                   5_000

    assert {:ok, %{sessions: 0, programs: 0}} = DSPyBridge.stats(pool, worker_stats: false)
  end

  test "typed errors: invalid args, unknown program, no LM" do
    pool = start_pool(size: 1)

    assert {:error, %Error{type: :invalid_args, details: details}} =
             DSPyBridge.configure_lm(pool, [model: "mock", temperature: 7], session: "e")

    assert inspect(details) =~ "temperature"

    assert {:error, %Error{type: :not_found}} =
             DSPyBridge.execute(pool, "nope", %{question: "x"}, session: "e")

    {:ok, _} =
      DSPyBridge.create_program(pool, [signature: "question -> answer", program_id: "p"],
        session: "e"
      )

    assert {:error, %Error{type: :lm_not_configured}} =
             DSPyBridge.execute(pool, "p", %{question: "x"}, session: "e")

    assert {:error, %Error{type: :already_exists}} =
             DSPyBridge.create_program(pool, [signature: "question -> answer", program_id: "p"],
               session: "e"
             )
  end

  test "two sessions with different mock LMs never see each other's answers" do
    pool = start_pool()
    # two sessions on the same worker, and one on the other worker
    [a, b] = sessions_on(0, 2, 2, "tenant")
    [c] = sessions_on(1, 2, 1, "tenant")

    for {s, tag} <- [{a, "A"}, {b, "B"}, {c, "C"}] do
      {:ok, _} =
        DSPyBridge.configure_lm(pool, mock(tag, default: "from-#{tag}", latency_ms: 5), session: s)

      {:ok, _} =
        DSPyBridge.create_program(pool, [signature: "question -> answer", program_id: "p"],
          session: s
        )
    end

    results =
      for i <- 1..600 do
        {s, tag} = Enum.at([{a, "A"}, {b, "B"}, {c, "C"}], rem(i, 3))

        Task.async(fn ->
          {tag, DSPyBridge.execute(pool, "p", %{question: "q#{i}"}, session: s)}
        end)
      end
      |> Task.await_many(60_000)

    for {tag, result} <- results, do: assert(answer(result) == "from-#{tag}")

    # a session's program lives only on its own worker
    assert {:error, %Error{type: :not_found}} =
             DSPyBridge.execute(pool, "p", %{question: "x"}, session: c, worker: 0)

    {:ok, usage_a} = DSPyBridge.get_usage(pool, session: a)
    refute inspect(usage_a) =~ "mock/B"
  end

  test "a slow execute times out, is cancelled in the worker, and its late reply is dropped" do
    pool = start_pool(size: 1)
    DSPyBridge.subscribe(pool)

    {:ok, _} =
      DSPyBridge.configure_lm(pool, mock("slow", default: "late", latency_ms: 5_000),
        session: "slow"
      )

    {:ok, _} =
      DSPyBridge.create_program(pool, [signature: "question -> answer", program_id: "p"],
        session: "slow"
      )

    started = System.monotonic_time(:millisecond)

    assert {:error, %Error{type: :timeout}} =
             DSPyBridge.execute(pool, "p", %{question: "x"}, session: "slow", timeout: 200)

    assert_receive {:dspy_bridge_event,
                    %Event{
                      name: "late_reply_dropped",
                      data: %{"command" => "execute_program"} = d
                    }},
                   3_000

    assert d["outcome"] == "cancelled"
    assert System.monotonic_time(:millisecond) - started < 3_000

    {:messages, messages} = Process.info(self(), :messages)
    assert Enum.filter(messages, &match?({ref, _} when is_reference(ref), &1)) == []
  end

  test "kill -9 of a worker loses no session: programs are replayed and answer the same" do
    pool = start_pool(default_lm: mock("default", default: "shared"))
    DSPyBridge.subscribe(pool)
    sessions = sessions_on(0, 2, 3, "keep") ++ sessions_on(1, 2, 2, "keep")

    for s <- sessions do
      {:ok, _} = DSPyBridge.configure_lm(pool, mock(s, default: "answer-of-#{s}"), session: s)

      {:ok, _} =
        DSPyBridge.create_program(pool, [signature: "question -> answer", program_id: "qa"],
          session: s
        )

      {:ok, _} =
        DSPyBridge.create_program(
          pool,
          [signature: "question -> answer", program_id: "cot", program_type: "chain_of_thought"],
          session: s
        )
    end

    # a program of the default session, and one imported
    {:ok, _} =
      DSPyBridge.create_program(pool, signature: "question -> answer", program_id: "shared")

    {:ok, doc} = DSPyBridge.export_program(pool, "qa", session: hd(sessions))
    {:ok, _} = DSPyBridge.import_program(pool, doc, session: "imported", program_id: "imp")

    # one deleted program must stay deleted
    {:ok, _} =
      DSPyBridge.create_program(pool, [signature: "question -> answer", program_id: "gone"],
        session: hd(sessions)
      )

    {:ok, _} = DSPyBridge.delete_program(pool, "gone", session: hd(sessions))

    # a checkpointed program is replayed from its exported state
    {:ok, %{"format" => "dspy-bridge/program"}} =
      DSPyBridge.checkpoint_program(pool, "cot", session: List.last(sessions))

    calls =
      for(s <- sessions, p <- ["qa", "cot"], do: {s, p}) ++
        [{nil, "shared"}, {"imported", "imp"}]

    run = fn ->
      for {s, p} <- calls, into: %{} do
        {{s, p}, answer(DSPyBridge.execute(pool, p, %{question: "who?"}, session: s))}
      end
    end

    before = run.()
    assert before[{hd(sessions), "qa"}] == "answer-of-#{hd(sessions)}"
    assert before[{nil, "shared"}] == "shared"

    for index <- [0, 1] do
      {_, _, os_pid, _} = Enum.at(Pool.workers(pool), index)
      kill9(os_pid)
      assert_receive {:dspy_bridge_event, %Event{name: "worker_exited", worker: ^index}}, 5_000

      assert_receive {:dspy_bridge_event,
                      %Event{name: "replayed", worker: ^index, data: %{"failed" => 0} = data}},
                     20_000

      assert data["commands"] > 0
      refute os_alive?(os_pid)
    end

    assert run.() == before

    assert {:error, %Error{type: :not_found}} =
             DSPyBridge.get_program(pool, "gone", session: hd(sessions))
  end
end
