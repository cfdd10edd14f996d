defmodule DSPyBridge.StreamTest do
  # stream/4 and execute/4's on_chunk against real workers: the mock LM
  # streams its answer a few words at a time, its latency spread over them.
  use ExUnit.Case, async: true

  import DSPyBridge.Test.Helpers

  alias DSPyBridge.{Error, Pool}

  @moduletag :dspy
  @moduletag timeout: 120_000

  @answer "The sky looks blue because the air scatters the blue light of the sun more than the red."

  setup do
    pool = pool_name("stream")
    start_supervised!({Pool, worker_opts(name: pool, size: 2, log_level: "error")})
    s = "streamer-#{System.unique_integer([:positive])}"

    {:ok, _} =
      DSPyBridge.configure_lm(
        pool,
        [model: "mock/stream", extra: %{default: @answer, latency_ms: 300}],
        session: s
      )

    for {id, type} <- [{"qa", "predict"}, {"cot", "chain_of_thought"}] do
      {:ok, _} =
        DSPyBridge.create_program(
          pool,
          [signature: "question -> answer", program_id: id, program_type: type],
          session: s
        )
    end

    %{pool: pool, s: s}
  end

  defp chunks(items, field), do: for({:chunk, ^field, text} <- items, do: text)

  test "a stream yields several chunks as they come, then {:done, result}", %{pool: pool, s: s} do
    stream = DSPyBridge.stream(pool, "qa", %{question: "Why is the sky blue?"}, session: s)
    items = Enum.to_list(stream)

    assert {:done, %{"outputs" => %{"answer" => @answer}} = result} = List.last(items)
    assert result["usage"]["requests"] == 1
    answer = chunks(items, "answer")
    assert length(answer) >= 3
    assert Enum.join(answer) == @answer
    # only chunks before the end, and none empty
    assert Enum.all?(Enum.drop(items, -1), &match?({:chunk, "answer", text} when text != "", &1))
    assert Process.info(self(), :messages) == {:messages, []}
  end

  test "chain_of_thought streams its reasoning first, then the answer", %{pool: pool, s: s} do
    items = pool |> DSPyBridge.stream("cot", %{question: "Why?"}, session: s) |> Enum.to_list()
    assert {:done, %{"outputs" => outputs}} = List.last(items)
    assert Enum.join(chunks(items, "reasoning")) == outputs["reasoning"]
    assert Enum.join(chunks(items, "answer")) == @answer
    fields = for {:chunk, field, _} <- items, uniq: true, do: field
    assert fields == ["reasoning", "answer"]
  end

  test "execute with on_chunk: the chunks in the caller, then the usual result",
       %{pool: pool, s: s} do
    me = self()

    assert {:ok, %{"outputs" => %{"answer" => @answer}}} =
             DSPyBridge.execute(pool, "qa", %{question: "And the sunset?"},
               session: s,
               on_chunk: fn item ->
                 assert self() == me
                 send(me, {:item, item})
               end
             )

    items = collect()
    assert length(items) >= 3
    assert Enum.join(chunks(items, "answer")) == @answer
  end

  test "a caller slow to take its chunks holds up no one else", %{pool: pool, s: s} do
    test = self()

    # its on_chunk waits for a :go per chunk, and says when it is waiting
    slow =
      Task.async(fn ->
        DSPyBridge.execute(pool, "qa", %{question: "Slow reader?"},
          session: s,
          on_chunk: fn item ->
            send(test, {:waiting, self()})

            receive do
              :go -> item
            end
          end
        )
      end)

    assert_receive {:waiting, reader}, 30_000
    # the same worker answers others meanwhile, streamed ones included
    assert {:ok, %{"status" => "ok"}} = DSPyBridge.ping(pool, session: s)

    items =
      pool |> DSPyBridge.stream("qa", %{question: "Fast reader?"}, session: s) |> Enum.to_list()

    assert {:done, %{"outputs" => %{"answer" => @answer}}} = List.last(items)

    for _ <- 1..100, do: send(reader, :go)
    assert {:ok, %{"outputs" => %{"answer" => @answer}}} = Task.await(slow, 30_000)
  end

  test "an answer the cache holds comes whole; an error ends the stream", %{pool: pool, s: s} do
    question = %{question: "Cached?"}
    first = pool |> DSPyBridge.stream("qa", question, session: s) |> Enum.to_list()
    assert length(first) > 1

    assert [{:done, %{"outputs" => %{"answer" => @answer}, "usage" => usage}}] =
             pool |> DSPyBridge.stream("qa", question, session: s) |> Enum.to_list()

    assert usage["cached_requests"] == 1

    assert [{:error, %Error{type: :not_found}}] =
             pool |> DSPyBridge.stream("missing", question, session: s) |> Enum.to_list()

    assert [{:error, %Error{type: :invalid_args}}] =
             pool |> DSPyBridge.stream("qa", %{wrong: "field"}, session: s) |> Enum.to_list()
  end

  test "a stream halted early leaves nothing behind", %{pool: pool, s: s} do
    assert [{:chunk, "answer", _}, {:chunk, "answer", _}] =
             pool |> DSPyBridge.stream("qa", %{question: "Half?"}, session: s) |> Enum.take(2)

    # a whole one after it (which outlasts what was left of the first)
    items = pool |> DSPyBridge.stream("qa", %{question: "Whole?"}, session: s) |> Enum.to_list()
    assert {:done, _} = List.last(items)
    assert Process.info(self(), :messages) == {:messages, []}
  end

  test "a react agent's stream says what its tools do", %{pool: pool} do
    s = "agent"

    lm = [
      model: "mock/agent",
      extra: %{
        sequence: [
          %{
            next_thought: "Look it up.",
            next_tool_name: "lookup_order",
            next_tool_args: %{order_id: "A-17"}
          },
          %{next_thought: "Done.", next_tool_name: "finish", next_tool_args: %{}},
          %{reasoning: "It shipped.", answer: "Shipped with DHL; it arrives on Monday morning."}
        ],
        latency_ms: 100
      }
    ]

    {:ok, _} = DSPyBridge.configure_lm(pool, lm, session: s)

    tool = %{
      name: "lookup_order",
      description: "Finds an order by its id.",
      parameters: %{type: "object", properties: %{order_id: %{type: "string"}}},
      run: fn %{"order_id" => id} -> %{order: id, status: "shipped"} end
    }

    {:ok, _} =
      DSPyBridge.create_program(
        pool,
        %{
          program_id: "agent",
          signature: "question -> answer",
          program_type: :react,
          options: %{tools: [tool], max_iters: 5}
        },
        session: s
      )

    items =
      pool
      |> DSPyBridge.stream("agent", %{question: "Where is A-17?"}, session: s)
      |> Enum.to_list()

    statuses = for {:status, message} <- items, do: message
    assert Enum.any?(statuses, &(&1 =~ "lookup_order"))
    assert {:done, %{"trajectory" => [_ | _], "outputs" => outputs}} = List.last(items)
    assert Enum.join(chunks(items, "answer")) == outputs["answer"]
  end

  test "options are checked when the stream is made, not when it runs", %{pool: pool} do
    assert_raise ArgumentError, ~r/sesion/, fn ->
      DSPyBridge.stream(pool, "qa", %{}, sesion: "x")
    end

    assert_raise ArgumentError, ~r/on_chunk/, fn ->
      DSPyBridge.stream(pool, "qa", %{}, on_chunk: & &1)
    end

    assert_raise ArgumentError, ~r/no DSPyBridge.Pool/, fn ->
      DSPyBridge.stream(:no_such_pool, "qa", %{})
    end
  end

  defp collect do
    receive do
      {:item, item} -> [item | collect()]
    after
      0 -> []
    end
  end
end
