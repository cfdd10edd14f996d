defmodule DSPyBridge.ToolsTest do
  # Host functions (register_tools, callbacks) through the pool, on real
  # workers and the worker's mock LM: ReAct agents calling Elixir tools, a
  # host reward for best_of_n, a mock LM whose answers come from the host.
  use ExUnit.Case, async: true

  import DSPyBridge.Test.Helpers

  alias DSPyBridge.{Error, Event, Pool, Worker}

  @moduletag :dspy
  @moduletag timeout: 180_000

  defp start_pool(extra \\ []) do
    name = pool_name("tools")
    start_supervised!({Pool, worker_opts(Keyword.merge([name: name, size: 2], extra))})
    name
  end

  # One ReAct run on the mock LM: a step per tool call (the step predictor's
  # next_thought/next_tool_name/next_tool_args), the `finish` step, then the
  # extract step's reasoning and answer.
  defp react_run(calls, answer) do
    steps =
      for {thought, tool, args} <- calls,
          do: %{next_thought: thought, next_tool_name: tool, next_tool_args: args}

    steps ++
      [
        %{next_thought: "I know enough.", next_tool_name: "finish", next_tool_args: %{}},
        %{reasoning: "From the observations.", answer: answer}
      ]
  end

  defp mock(sequence), do: [model: "mock", extra: %{sequence: sequence}]

  defp agent(pool, session, tools, extra_options \\ %{}) do
    {:ok, _} =
      DSPyBridge.create_program(
        pool,
        %{
          program_id: "agent",
          signature: "question -> answer",
          program_type: :react,
          options: Map.merge(%{tools: tools, max_iters: 5}, extra_options)
        },
        session: session
      )
  end

  defp order_tools(test) do
    [
      %{
        name: "lookup_order",
        description: "Finds an order by its id.",
        parameters: %{
          type: "object",
          properties: %{order_id: %{type: "string"}},
          required: ["order_id"]
        },
        run: fn %{"order_id" => id} = args ->
          send(test, {:tool, "lookup_order", args})
          {:ok, %{order_id: id, status: "shipped", carrier: "DHL"}}
        end
      },
      %{
        name: "shipping_eta",
        description: "Days until a carrier delivers.",
        parameters: %{type: "object", properties: %{carrier: %{type: "string"}}},
        run: {__MODULE__, :eta, [test]}
      }
    ]
  end

  @doc false
  def eta(%{"carrier" => carrier} = args, test) do
    send(test, {:tool, "shipping_eta", args})
    %{carrier: carrier, days: 2}
  end

  test "a ReAct agent calls two Elixir tools in order; observations in the trajectory" do
    pool = start_pool()
    s = "orders"
    test = self()

    assert {:ok, %{"registered" => ["lookup_order", "shipping_eta"], "tools" => 2}} =
             DSPyBridge.register_tools(pool, order_tools(test), session: s)

    assert {:ok, %{"tools" => listed}} = DSPyBridge.list_tools(pool, session: s)

    assert %{
             "description" => "Finds an order by its id.",
             "parameters" => %{"required" => ["order_id"]}
           } = Enum.find(listed, &(&1["name"] == "lookup_order"))

    run =
      react_run(
        [
          {"Look the order up.", "lookup_order", %{order_id: "A-17"}},
          {"When does DHL deliver?", "shipping_eta", %{carrier: "DHL"}}
        ],
        "Order A-17 shipped with DHL and arrives in 2 days."
      )

    {:ok, _} = DSPyBridge.configure_lm(pool, mock(run), session: s)
    agent(pool, s, ["lookup_order", "shipping_eta"])

    assert {:ok, result} =
             DSPyBridge.execute(pool, "agent", %{question: "Where is order A-17?"}, session: s)

    assert result["outputs"]["answer"] == "Order A-17 shipped with DHL and arrives in 2 days."

    assert [first, second, finish] = result["trajectory"]

    assert first == %{
             "thought" => "Look the order up.",
             "tool_name" => "lookup_order",
             "tool_args" => %{"order_id" => "A-17"},
             "observation" => %{"order_id" => "A-17", "status" => "shipped", "carrier" => "DHL"}
           }

    assert %{
             "tool_name" => "shipping_eta",
             "observation" => %{"carrier" => "DHL", "days" => 2}
           } = second

    assert finish["tool_name"] == "finish"

    # called in that order, each once, with the LM's arguments
    assert_received {:tool, "lookup_order", %{"order_id" => "A-17"}}
    assert_received {:tool, "shipping_eta", %{"carrier" => "DHL"}}
    refute_received {:tool, _, _}

    # the session's tools live on its worker only
    other = Enum.find([0, 1], &(&1 != Pool.index_for(s, 2)))

    assert {:ok, %{"tools" => []}} =
             DSPyBridge.request(pool, "list_tools", %{session_id: s}, worker: other)

    assert {:ok, %{tools: 2}} = DSPyBridge.stats(pool, worker_stats: false)
    assert {:ok, %{"deleted" => true}} = DSPyBridge.delete_tool(pool, "shipping_eta", session: s)

    assert {:ok, %{"tools" => [%{"name" => "lookup_order"}]}} =
             DSPyBridge.list_tools(pool, session: s)

    assert {:error, %Error{type: :not_found}} =
             DSPyBridge.delete_tool(pool, :shipping_eta, session: s)
  end

  test "a tool that raises, errs or returns what cannot be sent gives an error observation" do
    pool = start_pool(size: 1)
    s = "errors"

    {:ok, _} =
      DSPyBridge.register_tools(
        pool,
        [
          [name: "explode", run: fn _ -> raise ArgumentError, "the tool blew up" end],
          [name: "refuse", run: fn _ -> {:error, "no order A-99"} end],
          [name: "odd", run: fn _ -> {:a, :tuple} end]
        ],
        session: s
      )

    run =
      react_run(
        [{"Try it.", "explode", %{}}, {"Try that.", "refuse", %{}}, {"And this.", "odd", %{}}],
        "The tools failed."
      )

    {:ok, _} = DSPyBridge.configure_lm(pool, mock(run), session: s)
    agent(pool, s, ["explode", "refuse", "odd"])

    assert {:ok, result} = DSPyBridge.execute(pool, "agent", %{question: "Try"}, session: s)
    assert result["outputs"]["answer"] == "The tools failed."
    assert [explode, refuse, odd, %{"tool_name" => "finish"}] = result["trajectory"]

    assert explode["observation"] =~ "Execution error in explode"
    assert explode["observation"] =~ "the tool blew up"
    assert refuse["observation"] =~ "Execution error in refuse"
    assert refuse["observation"] =~ "no order A-99"
    assert odd["observation"] =~ "Execution error in odd"
    assert odd["observation"] =~ "cannot be sent"

    # the worker process is unharmed
    {_, pid, _, :ready} = hd(Pool.workers(pool))
    assert %{status: :ready, callbacks: 3, callbacks_running: 0} = Worker.info(pid)
  end

  test "a tool slower than the request's timeout: the request times out, the tool is killed, the worker is fine" do
    pool = start_pool(size: 1)
    DSPyBridge.subscribe(pool)
    s = "slow"
    test = self()

    hang = fn _ ->
      send(test, {:hanging, self()})
      # blocks until killed
      receive do: (:never -> :ok)
    end

    fast = fn _ -> "fast" end

    {:ok, _} =
      DSPyBridge.register_tools(pool, [[name: "hang", run: hang], [name: "fast", run: fast]],
        session: s
      )

    run = react_run([{"Wait for it.", "hang", %{}}], "never")
    {:ok, _} = DSPyBridge.configure_lm(pool, mock(run), session: s)
    agent(pool, s, ["hang", "fast"])

    call =
      Task.async(fn ->
        DSPyBridge.execute(pool, "agent", %{question: "q"}, session: s, timeout: 2_000)
      end)

    assert_receive {:hanging, tool}, 30_000
    ref = Process.monitor(tool)

    assert {:error, %Error{type: :timeout}} = Task.await(call, 30_000)
    assert_receive {:DOWN, ^ref, :process, ^tool, :killed}, 10_000

    assert_receive {:dspy_bridge_event,
                    %Event{name: "callback_abandoned", data: %{"reason" => reason}}},
                   10_000

    assert reason in ["cancelled", "timeout"]

    # the worker serves on: control and DSPy commands, host functions included
    assert {:ok, %{"status" => "ok"}} = DSPyBridge.ping(pool, session: s)
    # (a fresh mock: the cancelled run left its sequence half walked)
    {:ok, _} =
      DSPyBridge.configure_lm(pool, mock(react_run([{"Quick.", "fast", %{}}], "quick")),
        session: s
      )

    assert {:ok, %{"outputs" => %{"answer" => "quick"}}} =
             DSPyBridge.execute(pool, "agent", %{question: "q"}, session: s)

    {_, pid, _, :ready} = hd(Pool.workers(pool))
    assert %{callbacks_running: 0} = Worker.info(pid)
  end

  test "a tool slower than its callback's own timeout is killed; the agent goes on" do
    pool =
      start_pool(size: 1, extra_args: ["--enable-test-commands", "--callback-timeout-ms", "300"])

    s = "deadline"
    test = self()

    hang = fn _ ->
      send(test, {:hanging, self()})
      receive do: (:never -> :ok)
    end

    {:ok, _} = DSPyBridge.register_tools(pool, [[name: "hang", run: hang]], session: s)

    {:ok, _} =
      DSPyBridge.configure_lm(pool, mock(react_run([{"Wait.", "hang", %{}}], "gave up")),
        session: s
      )

    agent(pool, s, ["hang"])

    call = Task.async(fn -> DSPyBridge.execute(pool, "agent", %{question: "q"}, session: s) end)
    assert_receive {:hanging, tool}, 30_000
    ref = Process.monitor(tool)
    assert_receive {:DOWN, ^ref, :process, ^tool, :killed}, 10_000

    assert {:ok, result} = Task.await(call, 30_000)
    assert result["outputs"]["answer"] == "gave up"

    assert [%{"tool_name" => "hang", "observation" => observation}, _finish] =
             result["trajectory"]

    assert observation =~ "Execution error in hang"
    assert observation =~ "300 ms"
  end

  test "kill -9 mid-run: after the replay the tools and programs are back and answer the same" do
    pool = start_pool()
    DSPyBridge.subscribe(pool)
    [s] = sessions_on(0, 2, 1, "crash")
    test = self()
    block = :atomics.new(1, [])

    lookup = fn %{"order_id" => id} ->
      if :atomics.get(block, 1) == 1 do
        send(test, {:blocked, self()})
        receive do: (:never -> :ok)
      end

      %{order_id: id, status: "delivered"}
    end

    tools = [
      %{
        name: "lookup_order",
        description: "Finds an order by its id.",
        parameters: %{type: "object", properties: %{order_id: %{type: "string"}}},
        run: lookup
      }
    ]

    # the LM config is replayed as configured: its sequence starts over
    run = react_run([{"Look it up.", "lookup_order", %{order_id: "B-2"}}], "B-2 was delivered.")
    {:ok, _} = DSPyBridge.configure_lm(pool, mock(run ++ run), session: s)
    # the tool given inline: registered first, then named by the program
    agent(pool, s, tools)

    ask = fn -> DSPyBridge.execute(pool, "agent", %{question: "Where is B-2?"}, session: s) end
    assert {:ok, before} = ask.()
    assert before["outputs"]["answer"] == "B-2 was delivered."
    assert [%{"observation" => %{"status" => "delivered"}}, _] = before["trajectory"]

    # a second run, stuck in its tool when the worker dies
    :atomics.put(block, 1, 1)
    call = Task.async(ask)
    assert_receive {:blocked, tool}, 30_000
    ref = Process.monitor(tool)
    {_, _, os_pid, _} = Enum.at(Pool.workers(pool), 0)
    kill9(os_pid)

    assert {:error, %Error{type: :worker_exited}} = Task.await(call, 30_000)
    # the worker process's end kills the tool it was running
    assert_receive {:DOWN, ^ref, :process, ^tool, :killed}, 10_000
    assert_receive {:dspy_bridge_event, %Event{name: "worker_exited", worker: 0}}, 10_000

    assert_receive {:dspy_bridge_event,
                    %Event{name: "replayed", worker: 0, data: %{"failed" => 0, "commands" => n}}},
                   30_000

    # register_tools, configure_lm, create_program
    assert n == 3
    refute os_alive?(os_pid)

    :atomics.put(block, 1, 0)

    assert {:ok, %{"tools" => [%{"name" => "lookup_order"}]}} =
             DSPyBridge.list_tools(pool, session: s)

    assert {:ok, again} = ask.()
    assert again["outputs"] == before["outputs"]
    assert again["trajectory"] == before["trajectory"]
  end

  test "best_of_n with a host reward takes the first attempt that scores the threshold" do
    pool = start_pool(size: 1)
    s = "best"
    test = self()

    score = fn %{"inputs" => inputs, "outputs" => %{"answer" => answer}} ->
      send(test, {:reward, inputs["question"], answer})
      if answer == "good", do: 1.0, else: 0.25
    end

    {:ok, _} = DSPyBridge.configure_lm(pool, mock(["bad", "meh", "good", "late"]), session: s)

    {:ok, _} =
      DSPyBridge.create_program(
        pool,
        %{
          program_id: "best",
          signature: "question -> answer",
          program_type: :best_of_n,
          options: %{n: 4, threshold: 1.0, reward: %{function: %{name: "score", run: score}}}
        },
        session: s
      )

    assert {:ok, %{"outputs" => %{"answer" => "good"}}} =
             DSPyBridge.execute(pool, "best", %{question: "pick"}, session: s)

    assert_received {:reward, "pick", "bad"}
    assert_received {:reward, "pick", "meh"}
    assert_received {:reward, "pick", "good"}
    refute_received {:reward, _, _}

    # a reward that fails fails the request with :host_error
    {:ok, _} =
      DSPyBridge.register_tools(pool, [[name: "score", run: fn _ -> raise "no score" end]],
        session: s
      )

    assert {:error,
            %Error{type: :host_error, details: %{"reason" => "error", "function" => "score"}}} =
             DSPyBridge.execute(pool, "best", %{question: "pick"}, session: s)

    {:ok, _} =
      DSPyBridge.register_tools(pool, [[name: "score", run: fn _ -> "high" end]], session: s)

    assert {:error, %Error{type: :host_error, details: %{"reason" => "malformed"}}} =
             DSPyBridge.execute(pool, "best", %{question: "pick"}, session: s)
  end

  test "many concurrent agents wait on a slow tool while the worker still answers ping" do
    pool = start_pool(size: 1)
    s = "busy"
    test = self()
    n = 16

    # a mock LM whose answers come from the host: by the step it is asked for
    generator = fn %{"inputs" => inputs, "outputs" => outputs} ->
      observed? =
        Map.has_key?(inputs, "observation_0") or
          String.contains?(inputs["trajectory"] || "", "observation_0")

      cond do
        "answer" in outputs ->
          %{reasoning: "Looked it up.", answer: "answer to #{inputs["question"]}"}

        observed? ->
          %{next_thought: "Done.", next_tool_name: "finish", next_tool_args: %{}}

        true ->
          %{
            next_thought: "Look.",
            next_tool_name: "slow_lookup",
            next_tool_args: %{q: inputs["question"]}
          }
      end
    end

    slow = fn %{"q" => q} ->
      send(test, {:waiting, q, self()})

      receive do
        :release -> "found #{q}"
      end
    end

    {:ok, _} =
      DSPyBridge.configure_lm(
        pool,
        [model: "mock", extra: %{generator: %{name: "gen", run: generator}}],
        session: s
      )

    agent(pool, s, [
      %{
        name: "slow_lookup",
        parameters: %{type: "object", properties: %{q: %{type: "string"}}},
        run: slow
      }
    ])

    calls =
      for i <- 1..n do
        Task.async(fn ->
          DSPyBridge.execute(pool, "agent", %{question: "q#{i}"}, session: s, timeout: 120_000)
        end)
      end

    tools =
      for _ <- 1..n do
        assert_receive {:waiting, q, pid}, 60_000
        {q, pid}
      end

    assert tools |> Enum.map(&elem(&1, 0)) |> Enum.sort() == Enum.sort(for i <- 1..n, do: "q#{i}")

    # every agent is stuck in its tool, and the worker is not: ping answers,
    # and sees them all in flight
    assert {:ok, %{"status" => "ok", "in_flight" => in_flight}} =
             DSPyBridge.ping(pool, session: s)

    assert in_flight >= n
    {_, pid, _, :ready} = hd(Pool.workers(pool))
    assert %{callbacks_running: ^n} = Worker.info(pid)
    assert Enum.all?(calls, &(Task.yield(&1, 0) == nil))

    for {_, tool} <- tools, do: send(tool, :release)

    for {task, i} <- Enum.with_index(calls, 1) do
      assert {:ok, result} = Task.await(task, 120_000)
      assert result["outputs"]["answer"] == "answer to q#{i}"
      assert [%{"tool_name" => "slow_lookup", "observation" => obs}, _] = result["trajectory"]
      assert obs == "found q#{i}"
    end
  end

  test "the default session's host functions live on every worker" do
    pool =
      start_pool(
        default_lm:
          mock(
            react_run([{"Ask.", "whoami", %{}}], "shared")
            |> List.duplicate(2)
            |> Enum.concat()
          )
      )

    test = self()

    {:ok, %{"registered" => ["whoami"]}} =
      DSPyBridge.register_tools(pool, [
        [
          name: "whoami",
          run: fn _, ctx ->
            send(test, {:ctx, ctx})
            "host"
          end
        ]
      ])

    agent(pool, nil, ["whoami"])

    for worker <- [0, 1] do
      assert {:ok, %{"outputs" => %{"answer" => "shared"}, "trajectory" => [step, _]}} =
               DSPyBridge.execute(pool, "agent", %{question: "q"}, worker: worker)

      assert step["observation"] == "host"

      assert_received {:ctx,
                       %{
                         purpose: "tool",
                         function: "whoami",
                         session_id: "default",
                         callback_id: "cb-" <> _
                       }}
    end
  end

  test "a worker outside a pool answers every callback with an error" do
    pid = start_supervised!({Worker, worker_opts()}, restart: :temporary)
    :ok = Worker.await_ready(pid)
    s = %{session_id: "alone"}

    {:ok, _} = Worker.request(pid, "register_tools", Map.put(s, :tools, [%{name: "t"}]))

    {:ok, _} =
      Worker.request(
        pid,
        "configure_lm",
        Map.merge(s, %{
          model: "mock",
          extra: %{sequence: react_run([{"Try.", "t", %{}}], "alone")}
        })
      )

    {:ok, _} =
      Worker.request(
        pid,
        "create_program",
        Map.merge(s, %{
          program_id: "a",
          signature: "question -> answer",
          program_type: "react",
          options: %{tools: ["t"]}
        })
      )

    assert {:ok, %{"outputs" => %{"answer" => "alone"}, "trajectory" => [step, _]}} =
             Worker.request(
               pid,
               "execute_program",
               Map.merge(s, %{program_id: "a", inputs: %{question: "q"}})
             )

    assert step["observation"] =~ "Execution error in t"
    assert step["observation"] =~ "not part of a DSPyBridge.Pool"
  end

  test "a program naming an undeclared tool is refused; a spec without :run raises" do
    pool = start_pool(size: 1)

    assert {:error, %Error{type: :invalid_args}} =
             DSPyBridge.create_program(
               pool,
               %{
                 signature: "question -> answer",
                 program_type: :react,
                 options: %{tools: ["nope"]}
               },
               session: "undeclared"
             )

    assert_raise ArgumentError, ~r/:run/, fn ->
      DSPyBridge.register_tools(pool, [%{name: "x"}], session: "undeclared")
    end

    assert {:error, %Error{type: :invalid_args}} =
             DSPyBridge.register_tools(pool, [[name: "finish", run: &Function.identity/1]],
               session: "undeclared"
             )
  end
end

defmodule DSPyBridge.ToolsTelemetryTest do
  # Sync: the :telemetry stand-in forwards to one registered process.
  use ExUnit.Case, async: false

  import DSPyBridge.Test.Helpers

  alias DSPyBridge.Pool

  @moduletag :dspy
  @moduletag timeout: 120_000

  test "each host function call emits :start and :stop with its name, duration and outcome" do
    Process.register(self(), :dspy_bridge_telemetry_listener)
    assert DSPyBridge.Telemetry.refresh()
    pool = pool_name("tools_tel")
    start_supervised!({Pool, worker_opts(name: pool, size: 1)})
    s = "tel"

    {:ok, _} =
      DSPyBridge.register_tools(
        pool,
        [
          [name: "good", run: fn _ -> "fine" end],
          [name: "bad", run: fn _ -> raise "bad tool" end]
        ],
        session: s
      )

    steps = [
      %{next_thought: "a", next_tool_name: "good", next_tool_args: %{}},
      %{next_thought: "b", next_tool_name: "bad", next_tool_args: %{}},
      %{next_thought: "c", next_tool_name: "finish", next_tool_args: %{}},
      %{reasoning: "r", answer: "done"}
    ]

    {:ok, _} =
      DSPyBridge.configure_lm(pool, [model: "mock", extra: %{sequence: steps}], session: s)

    {:ok, _} =
      DSPyBridge.create_program(
        pool,
        %{
          program_id: "a",
          signature: "question -> answer",
          program_type: "react",
          options: %{tools: ["good", "bad"]}
        },
        session: s
      )

    assert {:ok, %{"outputs" => %{"answer" => "done"}}} =
             DSPyBridge.execute(pool, "a", %{question: "q"}, session: s)

    for {function, outcome} <- [{"good", :ok}, {"bad", :exception}] do
      assert_received {:telemetry, [:dspy_bridge, :tool, :start], %{system_time: _},
                       %{
                         function: ^function,
                         purpose: "tool",
                         session_id: ^s,
                         pool: ^pool,
                         worker: 0
                       }}

      assert_received {:telemetry, [:dspy_bridge, :tool, :stop], %{duration: duration},
                       %{function: ^function, outcome: ^outcome, callback_id: "cb-" <> _} = meta}

      assert is_integer(duration) and duration >= 0
      assert meta.request_id != nil
    end
  after
    if Process.whereis(:dspy_bridge_telemetry_listener) == self(),
      do: Process.unregister(:dspy_bridge_telemetry_listener)
  end
end
