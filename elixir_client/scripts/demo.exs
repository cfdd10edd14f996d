# The dspy-bridge demo, driven from Elixir:
#
#     cd elixir_client && mix run scripts/demo.exs
#
# Starts a pool of 2 Python workers on the built-in mock LM, gives two
# sessions different LMs, creates a question-answering program and a
# chain-of-thought program, runs them, runs a ReAct agent whose tool is an
# Elixir function, compiles a program with a few-shot optimizer (its
# progress on one live line, its score before and after), streams an
# answer as it is written, kills a worker with SIGKILL to show a session
# (and the compiled program) surviving it, and prints results and pool
# statistics.

# The client logs worker events with Logger; the demo prints its own account.
Logger.configure(level: :critical)

defmodule Demo do
  def section(title),
    do: IO.puts("\n== #{title} " <> String.duplicate("=", max(60 - String.length(title), 3)))

  def show_answer(label, {:ok, %{"outputs" => outputs} = result}) do
    IO.puts("  #{label}")

    for {field, value} <-
          Enum.sort_by(outputs, fn {k, _} -> if k == "reasoning", do: 0, else: 1 end) do
      IO.puts("      #{String.pad_trailing(field <> ":", 11)}#{value}")
    end

    IO.puts("      (lm #{result["lm"]}, #{result["duration_ms"]} ms)")
  end

  def show_answer(label, {:error, error}),
    do: IO.puts("  #{label}\n      ERROR #{Exception.message(error)}")

  def show_stats(pool) do
    {:ok, stats} = DSPyBridge.stats(pool)

    IO.puts(
      "  pool #{inspect(stats.pool)}: #{stats.size} workers, #{stats.sessions} sessions and " <>
        "#{stats.programs} programs recorded for replay"
    )

    IO.puts("    worker  os_pid  status  restarts  requests  executes  in_flight  rss_mb")

    for w <- stats.workers do
      ws = w.worker_stats || %{}
      executes = get_in(ws, ["requests", "execute_program"]) || 0
      rss = if ws["rss_bytes"], do: Float.round(ws["rss_bytes"] / 1_048_576, 1), else: "-"

      IO.puts(
        "    " <>
          Enum.map_join(
            [
              {w.index, 6},
              {w.os_pid, 6},
              {w.status, 6},
              {w.restarts, 8},
              {w.requests, 8},
              {executes, 8},
              {w.in_flight, 9},
              {rss, 6}
            ],
            "  ",
            fn {v, width} -> String.pad_leading(to_string(v), width) end
          )
      )
    end
  end

  def await_event(name, index) do
    receive do
      {:dspy_bridge_event, %DSPyBridge.Event{name: ^name, worker: ^index} = event} -> event
    after
      30_000 -> raise "no #{name} event from worker #{index}"
    end
  end
end

pool = DSPy.Demo
mock = fn name, extra -> [model: "mock/#{name}", extra: extra] end

Demo.section("Starting a pool of 2 workers")
started = System.monotonic_time(:millisecond)

{:ok, _sup} =
  DSPyBridge.Pool.start_link(
    name: pool,
    size: 2,
    log_level: "warning",
    default_lm: mock.("default", %{default: "I only know the default answer."})
  )

DSPyBridge.subscribe(pool)

IO.puts(
  "  ready in #{System.monotonic_time(:millisecond) - started} ms " <>
    "(Python started, DSPy loaded, default LM configured)"
)

for {index, _pid, os_pid, status} <- DSPyBridge.Pool.workers(pool),
    do: IO.puts("  worker #{index}: OS pid #{os_pid}, #{status}")

Demo.section("Two sessions, two different LMs")

sessions = %{
  "alice" =>
    mock.("alice", %{
      responses: %{
        "What is the capital of France?" => "Paris",
        "What is 17 * 3?" => %{answer: "51", reasoning: "17 * 3 = 10 * 3 + 7 * 3 = 30 + 21 = 51."}
      },
      latency_ms: 20
    }),
  "bob" =>
    mock.("bob", %{
      responses: %{"What is the capital of France?" => "Paris (according to Bob's model)"},
      default: "Bob's model has no idea.",
      latency_ms: 20
    })
}

for {session, lm} <- sessions do
  {:ok, _} = DSPyBridge.configure_lm(pool, lm, session: session)
  {_, os_pid} = DSPyBridge.Pool.worker_for(pool, session)
  IO.puts("  session #{inspect(session)} -> #{lm[:model]} on worker OS pid #{os_pid}")
end

Demo.section("Programs")

for session <- Map.keys(sessions) do
  {:ok, qa} =
    DSPyBridge.create_program(pool, [program_id: "qa", signature: "question -> answer"],
      session: session
    )

  IO.puts("  #{session}: created #{qa["program_id"]} (#{qa["program_type"]})")
end

{:ok, cot} =
  DSPyBridge.create_program(
    pool,
    [
      program_id: "reasoner",
      program_type: "chain_of_thought",
      signature: "question -> answer",
      instructions: "Think step by step, then answer briefly."
    ],
    session: "alice"
  )

IO.puts("  alice: created #{cot["program_id"]} (#{cot["program_type"]})")

Demo.section("Running them")

queries = [
  {"alice", "qa", "What is the capital of France?"},
  {"bob", "qa", "What is the capital of France?"},
  {"bob", "qa", "What is 17 * 3?"},
  {"alice", "reasoner", "What is 17 * 3?"}
]

before =
  for {session, program, question} <- queries do
    result = DSPyBridge.execute(pool, program, %{question: question}, session: session)
    Demo.show_answer("[#{session}/#{program}] #{question}", result)
    {{session, program, question}, result}
  end

isolation = DSPyBridge.execute(pool, "reasoner", %{question: "What is 17 * 3?"}, session: "bob")
Demo.show_answer("[bob/reasoner] (alice's program, from bob's session)", isolation)

Demo.section("A ReAct agent calling an Elixir tool")

# The tool is plain Elixir; it runs in a task of the pool, never in the worker process.
orders = %{"A-17" => %{status: "shipped", carrier: "DHL", eta: "Monday"}}

lookup_order = fn %{"order_id" => id} ->
  case Map.fetch(orders, id) do
    {:ok, order} -> {:ok, order}
    :error -> {:error, "no order #{id}"}
  end
end

# The mock LM scripts the agent's steps: a tool call, then finish, then the answer.
agent_lm =
  mock.("agent", %{
    sequence: [
      %{
        next_thought: "I should look the order up.",
        next_tool_name: "lookup_order",
        next_tool_args: %{order_id: "A-17"}
      },
      %{next_thought: "I know where it is.", next_tool_name: "finish", next_tool_args: %{}},
      %{
        reasoning: "The tool says it shipped with DHL.",
        answer: "Shipped with DHL; it arrives Monday."
      }
    ]
  })

{:ok, _} = DSPyBridge.configure_lm(pool, agent_lm, session: "carol")

{:ok, _} =
  DSPyBridge.register_tools(
    pool,
    [
      %{
        name: "lookup_order",
        description: "Finds an order by its id.",
        parameters: %{
          type: "object",
          properties: %{order_id: %{type: "string"}},
          required: ["order_id"]
        },
        run: lookup_order
      }
    ],
    session: "carol"
  )

{:ok, _} =
  DSPyBridge.create_program(
    pool,
    %{
      program_id: "agent",
      signature: "question -> answer",
      program_type: :react,
      options: %{tools: ["lookup_order"], max_iters: 5}
    },
    session: "carol"
  )

question = "Where is order A-17?"
IO.puts("  [carol/agent] #{question}")

case DSPyBridge.execute(pool, "agent", %{question: question}, session: "carol", timeout: 30_000) do
  {:ok, %{"outputs" => outputs, "trajectory" => steps}} ->
    for {step, n} <- Enum.with_index(steps, 1) do
      IO.puts("      step #{n}: #{step["thought"]}")

      IO.puts(
        "              #{step["tool_name"]}(#{inspect(step["tool_args"])}) -> " <>
          inspect(step["observation"])
      )
    end

    IO.puts("      answer:    #{outputs["answer"]}")

  {:error, error} ->
    IO.puts("      ERROR #{Exception.message(error)}")
end

Demo.section("Compiling a program with a few-shot optimizer")

# The mock LM asks an Elixir function for its answers (a `generator`): it
# knows the capitals only when the prompt holds demos, which is what the
# optimizer adds. The session lives on alice's worker, so the crash below
# shows the compiled program coming back.
capitals = %{
  "France" => "Paris",
  "Peru" => "Lima",
  "Japan" => "Tokyo",
  "Italy" => "Rome",
  "Kenya" => "Nairobi",
  "Canada" => "Ottawa",
  "Egypt" => "Cairo",
  "Chile" => "Santiago"
}

knows_with_demos = fn %{"inputs" => %{"country" => country}, "demos" => demos} ->
  if demos > 0, do: %{capital: Map.get(capitals, country, "?")}, else: %{capital: "no idea"}
end

teacher =
  Enum.find(["dave", "erin", "frank", "grace", "heidi"], fn s ->
    DSPyBridge.Pool.index_for(s, 2) == DSPyBridge.Pool.index_for("alice", 2)
  end)

{:ok, _} =
  DSPyBridge.configure_lm(
    pool,
    [
      model: "mock/teacher",
      extra: %{generator: %{name: "knows_with_demos", run: knows_with_demos}, latency_ms: 60}
    ],
    session: teacher
  )

{:ok, _} =
  DSPyBridge.create_program(pool, [program_id: "capitals", signature: "country -> capital"],
    session: teacher
  )

{trainset, valset} =
  capitals |> Enum.map(fn {c, cap} -> %{country: c, capital: cap} end) |> Enum.split(4)

IO.puts(
  "  [#{teacher}/capitals] labeled_few_shot, #{length(trainset)} training and " <>
    "#{length(valset)} validation examples, metric exact_match"
)

progress = fn %{"done" => done, "total" => total, "score" => score} ->
  bar = String.duplicate("#", div(20 * done, max(total, 1))) |> String.pad_trailing(20, ".")
  score = if is_number(score), do: :erlang.float_to_binary(score / 1, decimals: 2), else: "-"
  IO.write("\r      progress:  [#{bar}] #{done}/#{total} metric calls, mean score #{score}")
end

{:ok, compiled} =
  DSPyBridge.compile(pool, "capitals", :labeled_few_shot,
    session: teacher,
    trainset: trainset,
    valset: valset,
    metric: "exact_match",
    options: %{k: 2},
    on_progress: progress
  )

IO.puts("")

IO.puts(
  "      score:     #{compiled["score_before"]} before -> #{compiled["score_after"]} after " <>
    "(#{compiled["demos"]} demos, #{compiled["metric_calls"]} metric calls, " <>
    "#{round(compiled["duration_ms"])} ms)"
)

{:ok, %{"outputs" => %{"capital" => capital}}} =
  DSPyBridge.execute(pool, "capitals", %{country: "Chile"}, session: teacher)

IO.puts("      Chile ->   #{capital}")

Demo.section("Streaming an answer as it is written")

{:ok, _} =
  DSPyBridge.configure_lm(
    pool,
    mock.("storyteller", %{
      default:
        "Once upon a time, a small Elixir process asked a Python worker for a story, " <>
          "and the worker sent it back a few words at a time, over a port, as it wrote it.",
      latency_ms: 1_500
    }),
    session: "storyteller"
  )

{:ok, _} =
  DSPyBridge.create_program(pool, [program_id: "story", signature: "prompt -> story"],
    session: "storyteller"
  )

IO.puts("  [storyteller/story] Tell me a story.")
IO.write("      story:     ")

streamed =
  pool
  |> DSPyBridge.stream("story", %{prompt: "Tell me a story."}, session: "storyteller")
  |> Enum.reduce(0, fn
    {:chunk, "story", text}, n ->
      IO.write(text)
      n + 1

    {:done, result}, n ->
      IO.puts(
        "\n      (#{n} chunks as they came, lm #{result["lm"]}, #{result["duration_ms"]} ms)"
      )

      n

    {:error, error}, n ->
      IO.puts("\n      ERROR #{Exception.message(error)}")
      n

    _other, n ->
      n
  end)

true = streamed > 1

Demo.section("Pool statistics")
Demo.show_stats(pool)

Demo.section("Killing alice's worker with SIGKILL")
{_, victim} = DSPyBridge.Pool.worker_for(pool, "alice")
index = DSPyBridge.Pool.index_for("alice", 2)

# a slow call in flight on that worker when it dies
slow_lm = mock.("alice-slow", %{default: "too late", latency_ms: 10_000})

slow =
  Task.async(fn ->
    {micros, result} =
      :timer.tc(fn ->
        DSPyBridge.execute(pool, "qa", %{question: "slow?"}, session: "alice", lm: slow_lm)
      end)

    {div(micros, 1000), result}
  end)

# wait until it is in flight
{worker_pid, _} = DSPyBridge.Pool.worker_for(pool, "alice")

Stream.repeatedly(fn -> Process.sleep(5) && DSPyBridge.Worker.info(worker_pid).in_flight end)
|> Enum.find(&(&1 > 0))

IO.puts("  kill -9 #{victim}  (with a 10 s call in flight on it)")
System.cmd("kill", ["-9", Integer.to_string(victim)])
Demo.await_event("worker_exited", index)
IO.puts("  worker #{index} exited; the supervisor restarts it")
{ms, result} = Task.await(slow)

case result do
  {:error, %DSPyBridge.Error{} = e} ->
    IO.puts(
      "  the in-flight call failed after #{ms} ms: {:error, #{e.type}} \"#{e.message}\" (retryable: #{e.retryable})"
    )

  other ->
    IO.puts("  the in-flight call returned after #{ms} ms: #{inspect(other)}")
end

ready = Demo.await_event("ready", index)
IO.puts("  new worker OS pid #{ready.os_pid} is up")
replayed = Demo.await_event("replayed", index)

IO.puts(
  "  replayed #{replayed.data["commands"]} recorded commands into it " <>
    "in #{replayed.data["duration_ms"]} ms before it took traffic"
)

Demo.section("Same questions after the crash")

for {{session, program, question}, old} <- before do
  new = DSPyBridge.execute(pool, program, %{question: question}, session: session)
  Demo.show_answer("[#{session}/#{program}] #{question}", new)
  same = match?({:ok, _}, new) and elem(new, 1)["outputs"] == elem(old, 1)["outputs"]
  IO.puts("      same answer as before the crash: #{same}")
end

{:ok, %{"outputs" => %{"capital" => capital_after}}} =
  DSPyBridge.execute(pool, "capitals", %{country: "Chile"}, session: teacher)

IO.puts("  [#{teacher}/capitals] Chile -> #{capital_after}")
IO.puts("      the compiled program came back compiled: #{capital_after == capital}")

Demo.section("Usage per session (counted by the worker since it started)")

for session <- ["alice", "bob"] do
  {:ok, usage} = DSPyBridge.get_usage(pool, session: session)

  for {model, u} <- usage["models"] do
    IO.puts(
      "  #{String.pad_trailing(session, 6)} #{String.pad_trailing(model, 11)} " <>
        "#{u["requests"]} requests, #{u["prompt_tokens"]} prompt + " <>
        "#{u["completion_tokens"]} completion tokens, cost #{inspect(u["cost_usd"])}"
    )
  end
end

Demo.section("Pool statistics")
Demo.show_stats(pool)

Demo.section("Stopping")
os_pids = for {_, _, os_pid, _} <- DSPyBridge.Pool.workers(pool), do: os_pid
:ok = DSPyBridge.Pool.stop(pool)
alive = Enum.filter(os_pids, &File.exists?("/proc/#{&1}"))

IO.puts(
  "  pool stopped; Python processes left: #{if alive == [], do: "none", else: inspect(alive)}"
)
