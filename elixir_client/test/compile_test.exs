defmodule DSPyBridge.CompileTest do
  # compile/4 against real workers on the mock LM: progress to the caller,
  # the compiled program replayed after kill -9, resume from a checkpoint.
  use ExUnit.Case, async: true

  import DSPyBridge.Test.Helpers

  alias DSPyBridge.{Error, Event, Pool}

  @moduletag :dspy
  @moduletag timeout: 180_000

  @answers %{"France?" => "Paris", "Peru?" => "Lima", "Japan?" => "Tokyo", "Italy?" => "Rome"}

  defp start_pool(extra \\ []) do
    name = pool_name("compile")
    # log_level "error": the optimizers' own progress bars are logged as warnings
    start_supervised!(
      {Pool, worker_opts(Keyword.merge([name: name, size: 1, log_level: "error"], extra))}
    )

    name
  end

  defp examples, do: for({q, a} <- @answers, do: %{question: q, answer: a})

  # A mock LM that answers right only when its prompt holds demos, which is
  # what a few-shot optimizer adds: its generator is an Elixir function.
  defp knowing_lm(name) do
    [model: "mock/#{name}", extra: %{generator: %{name: "knows", run: &__MODULE__.knows/1}}]
  end

  @doc false
  def knows(%{"inputs" => %{"question" => q}, "demos" => demos}) when demos > 0,
    do: %{answer: Map.get(@answers, q, "?")}

  def knows(_args), do: %{answer: "I don't know"}

  defp answer(pool, program, question, session) do
    assert {:ok, %{"outputs" => %{"answer" => answer}}} =
             DSPyBridge.execute(pool, program, %{question: question}, session: session)

    answer
  end

  # A cacheable mock (answers by prompt, so a checkpoint can keep them), slow
  # enough that a run of `n` examples takes a while.
  defp slow_lm(name, n, latency_ms) do
    responses = Map.new(1..n, &{"q#{&1}", "a#{&1}"})
    [model: "mock/#{name}", extra: %{responses: responses, default: "?", latency_ms: latency_ms}]
  end

  defp numbered(n), do: for(i <- 1..n, do: %{question: "q#{i}", answer: "a#{i}"})

  defp collect(tag) do
    receive do
      {^tag, event} -> [event | collect(tag)]
    after
      0 -> []
    end
  end

  test "on_progress gets the compile's progress events in the caller, done never decreasing" do
    pool = start_pool()
    s = "progress"
    {:ok, _} = DSPyBridge.configure_lm(pool, slow_lm("progress", 12, 40), session: s)

    {:ok, _} =
      DSPyBridge.create_program(pool, [signature: "question -> answer", program_id: "qa"],
        session: s
      )

    me = self()

    assert {:ok, result} =
             DSPyBridge.compile(pool, "qa", :bootstrap_few_shot,
               session: s,
               trainset: numbered(12),
               valset: numbered(4),
               metric: "exact_match",
               options: %{max_bootstrapped_demos: 12},
               on_progress: fn event ->
                 # called in the calling process, while it waits
                 assert self() == me
                 send(me, {:progress, event})
               end
             )

    events = collect(:progress)
    # about four a second and one at the end, over a run of more than half a second
    assert length(events) >= 2
    assert Enum.all?(events, &match?(%{"stage" => "compile", "event" => "progress"}, &1))
    assert events |> Enum.map(& &1["request_id"]) |> Enum.uniq() |> length() == 1
    dones = Enum.map(events, & &1["done"])
    assert dones == Enum.sort(dones)
    assert length(Enum.uniq(dones)) >= 2
    last = List.last(events)
    assert last["done"] == result["metric_calls"]
    assert last["total"] == result["metric_calls"]
    assert last["score"] == result["score_after"]
    assert %{"optimizer" => "bootstrap_few_shot", "program_id" => "qa", "demos" => demos} = result
    assert demos > 0
  end

  test "a compiled program is replayed compiled after kill -9, replaced or beside the original" do
    pool = start_pool()
    s = "replayed"
    {:ok, _} = DSPyBridge.configure_lm(pool, knowing_lm("replayed"), session: s)

    for id <- ["qa", "base"] do
      {:ok, _} =
        DSPyBridge.create_program(pool, [signature: "question -> answer", program_id: id],
          session: s
        )
    end

    assert answer(pool, "qa", "Peru?", s) == "I don't know"

    compile = fn program, extra ->
      DSPyBridge.compile(
        pool,
        program,
        "labeled_few_shot",
        [
          session: s,
          trainset: examples(),
          valset: examples(),
          metric: "exact_match",
          options: %{k: 2}
        ] ++ extra
      )
    end

    # replaced in place: the score moves from 0 to 1 (the mock needs demos)
    assert {:ok, %{"program_id" => "qa", "score_before" => 0.0, "score_after" => 1.0} = r} =
             compile.("qa", [])

    assert r["demos"] == 2

    # stored beside the original, which stays as it was
    assert {:ok, %{"program_id" => "base-compiled", "score_after" => 1.0}} =
             compile.("base", target_program_id: "base-compiled")

    questions = Map.keys(@answers)

    before =
      for p <- ["qa", "base", "base-compiled"],
          q <- questions,
          into: %{},
          do: {{p, q}, answer(pool, p, q, s)}

    assert before[{"qa", "Peru?"}] == "Lima"
    assert before[{"base", "Peru?"}] == "I don't know"
    assert before[{"base-compiled", "Peru?"}] == "Lima"
    {:ok, %{"demos" => 2}} = DSPyBridge.get_program(pool, "base-compiled", session: s)

    DSPyBridge.subscribe(pool)
    {_pid, os_pid} = Pool.worker_for(pool, s)
    kill9(os_pid)
    assert_receive {:dspy_bridge_event, %Event{name: "replayed", data: data}}, 60_000
    assert data["failed"] == 0
    assert {_, new_os_pid} = Pool.worker_for(pool, s)
    assert new_os_pid != os_pid

    after_ =
      for p <- ["qa", "base", "base-compiled"],
          q <- questions,
          into: %{},
          do: {{p, q}, answer(pool, p, q, s)}

    assert after_ == before
    {:ok, %{"demos" => 2}} = DSPyBridge.get_program(pool, "qa", session: s)
    {:ok, %{"demos" => 0}} = DSPyBridge.get_program(pool, "base", session: s)
  end

  @doc false
  # a telemetry handler (it runs in the worker's process): this pool's requests
  def request_started(_event, _measurements, %{pool: pool, command: command}, %{
        pid: pid,
        pool: pool
      }),
      do: send(pid, {:request_started, command})

  def request_started(_event, _measurements, _metadata, _config), do: :ok

  test "a session's compile is recorded from its own reply, with no second request" do
    pool = start_pool()
    s = "one-request"
    handler = {__MODULE__, pool}
    config = %{pid: self(), pool: pool}
    start = [:dspy_bridge, :request, :start]
    :ok = :telemetry.attach(handler, start, &__MODULE__.request_started/4, config)
    on_exit(fn -> :telemetry.detach(handler) end)
    assert DSPyBridge.Telemetry.refresh()
    {:ok, _} = DSPyBridge.configure_lm(pool, knowing_lm("one"), session: s)

    {:ok, _} =
      DSPyBridge.create_program(pool, [signature: "question -> answer", program_id: "qa"],
        session: s
      )

    flush_started()

    assert {:ok, result} =
             DSPyBridge.compile(pool, "qa", "labeled_few_shot",
               session: s,
               trainset: examples(),
               metric: "exact_match",
               options: %{k: 2}
             )

    # the document the record was made from is not the caller's
    refute Map.has_key?(result, "document")
    assert flush_started() == ["compile_program"]
    # (that the record replays compiled: the kill -9 test above)
  end

  defp flush_started do
    receive do
      {:request_started, command} -> [command | flush_started()]
    after
      0 -> []
    end
  end

  test "in the default session the compiled program reaches every worker and its replay" do
    pool = start_pool(size: 2)
    {:ok, _} = DSPyBridge.configure_lm(pool, knowing_lm("default"))
    {:ok, _} = DSPyBridge.create_program(pool, signature: "question -> answer", program_id: "qa")

    assert {:ok, %{"score_after" => 1.0}} =
             DSPyBridge.compile(pool, "qa", :labeled_few_shot,
               trainset: examples(),
               valset: examples(),
               metric: "exact_match",
               options: %{k: 2}
             )

    execute = fn worker ->
      assert {:ok, %{"outputs" => %{"answer" => answer}}} =
               DSPyBridge.execute(pool, "qa", %{question: "Japan?"}, worker: worker)

      answer
    end

    assert execute.(0) == "Tokyo"
    assert execute.(1) == "Tokyo"

    DSPyBridge.subscribe(pool)
    [{1, _, os_pid, :ready}] = Enum.filter(Pool.workers(pool), &match?({1, _, _, _}, &1))
    kill9(os_pid)
    assert_receive {:dspy_bridge_event, %Event{name: "replayed", worker: 1}}, 60_000
    assert execute.(1) == "Tokyo"
  end

  @tag :tmp_dir
  test "resume: true re-issues a checkpointed compile after kill -9; its answers come back cached",
       %{tmp_dir: dir} do
    pool = start_pool(extra_args: ["--enable-test-commands", "--checkpoint-dir", dir])
    s = "resumed"
    n = 30
    # (the valset is not in the trainset: a fresh run asks nothing twice)
    {:ok, _} = DSPyBridge.configure_lm(pool, slow_lm("resumed", n + 4, 50), session: s)

    {:ok, _} =
      DSPyBridge.create_program(pool, [signature: "question -> answer", program_id: "qa"],
        session: s
      )

    DSPyBridge.subscribe(pool)
    me = self()

    task =
      Task.async(fn ->
        DSPyBridge.compile(pool, "qa", :bootstrap_few_shot,
          session: s,
          trainset: numbered(n),
          valset: numbered(n + 4) |> Enum.drop(n),
          metric: "exact_match",
          # large: every example is bootstrapped, so the run is long
          options: %{max_bootstrapped_demos: n},
          checkpoint: "resume-me",
          resume: true,
          on_progress: fn event -> send(me, {:progress, event}) end
        )
      end)

    # some answers are paid for (and checkpointed) when the worker dies
    seen = await_progress(5)
    {_pid, os_pid} = Pool.worker_for(pool, s)
    kill9(os_pid)
    assert_receive {:dspy_bridge_event, %Event{name: "worker_exited"}}, 30_000

    assert {:ok, result} = Task.await(task, 150_000)
    assert %{"program_id" => "qa", "score_after" => 1.0} = result
    assert %{"mock/resumed" => %{"cached_requests" => cached}} = result["usage"]
    assert cached > 0

    # the re-issued run started over: its progress went back to the beginning
    dones = Enum.map(seen ++ collect(:progress), & &1["done"])
    assert dones != Enum.sort(dones)

    {_, new_os_pid} = Pool.worker_for(pool, s)
    assert new_os_pid != os_pid
    assert {:ok, %{"demos" => demos}} = DSPyBridge.get_program(pool, "qa", session: s)
    assert demos > 0
  end

  @tag :tmp_dir
  test "without resume, a compile whose worker dies returns worker_exited", %{tmp_dir: dir} do
    pool = start_pool(extra_args: ["--enable-test-commands", "--checkpoint-dir", dir])
    s = "not-resumed"
    {:ok, _} = DSPyBridge.configure_lm(pool, slow_lm("not-resumed", 30, 50), session: s)

    {:ok, _} =
      DSPyBridge.create_program(pool, [signature: "question -> answer", program_id: "qa"],
        session: s
      )

    me = self()

    task =
      Task.async(fn ->
        DSPyBridge.compile(pool, "qa", :bootstrap_few_shot,
          session: s,
          trainset: numbered(30),
          metric: "exact_match",
          options: %{max_bootstrapped_demos: 30},
          checkpoint: "no-resume",
          on_progress: fn event -> send(me, {:progress, event}) end
        )
      end)

    await_progress(2)
    {_pid, os_pid} = Pool.worker_for(pool, s)
    kill9(os_pid)
    assert {:error, %Error{type: :worker_exited}} = Task.await(task, 30_000)
  end

  test "bad arguments: invalid_args from the worker, ArgumentError from the client" do
    pool = start_pool()
    s = "bad"
    {:ok, _} = DSPyBridge.configure_lm(pool, knowing_lm("bad"), session: s)

    {:ok, _} =
      DSPyBridge.create_program(pool, [signature: "question -> answer", program_id: "qa"],
        session: s
      )

    args = [session: s, trainset: examples(), metric: "exact_match"]

    assert {:error, %Error{type: :invalid_args, message: message}} =
             DSPyBridge.compile(pool, "qa", "no_such_optimizer", args)

    assert message =~ "optimizer"

    assert {:error, %Error{type: :invalid_args}} =
             DSPyBridge.compile(pool, "qa", :labeled_few_shot, args ++ [options: %{k: "many"}])

    # this pool's workers keep no checkpoints
    assert {:error, %Error{type: :invalid_args, message: message}} =
             DSPyBridge.compile(pool, "qa", :labeled_few_shot, args ++ [checkpoint: "c1"])

    assert message =~ "checkpoint"

    assert {:error, %Error{type: :not_found}} =
             DSPyBridge.compile(pool, "missing", :labeled_few_shot, args)

    {:ok, _} =
      DSPyBridge.create_program(pool, [signature: "question -> answer", program_id: "taken"],
        session: s
      )

    assert {:error, %Error{type: :already_exists}} =
             DSPyBridge.compile(
               pool,
               "qa",
               :labeled_few_shot,
               args ++ [target_program_id: "taken"]
             )

    assert_raise ArgumentError, ~r/checkpoint/, fn ->
      DSPyBridge.compile(pool, "qa", :labeled_few_shot, args ++ [resume: true])
    end

    assert_raise ArgumentError, ~r/trainset/, fn ->
      DSPyBridge.compile(pool, "qa", :labeled_few_shot, session: s, metric: "exact_match")
    end

    assert_raise ArgumentError, ~r/on_progres/, fn ->
      DSPyBridge.compile(pool, "qa", :labeled_few_shot, args ++ [on_progres: &IO.inspect/1])
    end
  end

  test "evaluate's on_progress: concurrent evaluations each get only their own events" do
    pool = start_pool()
    s = "evaluations"
    {:ok, _} = DSPyBridge.configure_lm(pool, slow_lm("evaluations", 8, 60), session: s)

    {:ok, _} =
      DSPyBridge.create_program(pool, [signature: "question -> answer", program_id: "qa"],
        session: s
      )

    # one devset size per caller, so each event tells whose it is; all on one worker
    sizes = Enum.to_list(2..7)

    results =
      sizes
      |> Enum.map(fn size ->
        Task.async(fn ->
          me = self()

          {:ok, result} =
            DSPyBridge.evaluate(pool, "qa", numbered(size), "exact_match",
              session: s,
              max_concurrency: 1,
              on_progress: fn event ->
                assert self() == me
                send(me, {:progress, event})
              end
            )

          {size, result, collect(:progress)}
        end)
      end)
      |> Task.await_many(60_000)

    for {size, result, events} <- results do
      assert %{"total" => ^size, "score" => 1.0} = result
      assert events != []
      assert Enum.all?(events, &match?(%{"stage" => "evaluate", "total" => ^size}, &1))
      assert events |> Enum.map(& &1["request_id"]) |> Enum.uniq() |> length() == 1
      dones = Enum.map(events, & &1["done"])
      assert dones == Enum.sort(dones)
      assert List.last(dones) == size
    end

    request_ids = for {_, _, [event | _]} <- results, do: event["request_id"]
    assert length(Enum.uniq(request_ids)) == length(sizes)
  end

  # Waits for a progress event of the compile with at least `done` metric
  # calls; returns the events taken meanwhile, that one last.
  defp await_progress(done) do
    receive do
      {:progress, %{"done" => d} = event} when d >= done -> [event]
      {:progress, event} -> [event | await_progress(done)]
    after
      60_000 -> flunk("no progress event with done >= #{done}")
    end
  end
end
