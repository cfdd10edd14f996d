defmodule DSPyBridge.DSPexTest do
  # Named signatures and the DSPex-compatible call shapes, on real workers and the mock LM.
  use ExUnit.Case, async: true

  import DSPyBridge.Test.Helpers

  alias DSPyBridge.{Error, Event, Pool}

  @moduletag :dspy
  @moduletag timeout: 120_000

  defp start_pool(extra) do
    name = pool_name("dspex")
    start_supervised!({Pool, worker_opts(Keyword.merge([name: name, size: 2], extra))})
    name
  end

  @basic_qa %{
    name: "BasicQA",
    docstring: "Answer questions with short factoid answers.",
    inputs: [%{name: "question", type: "string"}],
    outputs: [%{name: "answer", type: "string", desc: "often between 1 and 5 words"}]
  }

  test "the DSPex form: provider + model, lm_config, docstring, string types, map options" do
    pool = start_pool(default_lm: %{provider: :mock, model: "default", extra: %{default: "D"}})

    assert {:ok, %{"scope" => "worker", "lm" => lm}} =
             DSPyBridge.configure_lm(pool, %{
               provider: :openai,
               model: "gpt-3.5-turbo",
               api_key: "sk-test",
               temperature: 0.7
             })

    assert lm["api_key"] == "<redacted>"
    # the default LM is the pool's again (the openai one would need the network)
    {:ok, _} = DSPyBridge.configure_lm(pool, %{provider: :mock, model: "default", default: "D"})

    assert {:ok, %{"program_id" => id}} =
             DSPyBridge.create_program(pool, %{
               signature: @basic_qa,
               lm_config: %{provider: :mock, model: "qa", extra: %{default: "Paris"}}
             })

    inputs = %{question: "Capital of France?"}

    assert {:ok, %{"outputs" => %{"answer" => "Paris"}, "lm" => "mock/qa"}} =
             DSPyBridge.execute_program(pool, id, inputs)

    assert {:ok, %{"outputs" => %{"answer" => "Claude"}, "lm" => "mock/claude-3"}} =
             DSPyBridge.execute_program(pool, id, inputs, %{
               lm_config: %{provider: :mock, model: "claude-3", extra: %{default: "Claude"}}
             })

    assert {:ok, %{"outputs" => %{"answer" => "K"}}} =
             DSPyBridge.execute_program(pool, id, inputs,
               lm_config: [provider: :mock, model: "k", extra: %{default: "K"}],
               timeout: 20_000
             )

    # the pool's default_lm, given in the DSPex form, serves a program without its own LM
    {:ok, %{"program_id" => plain}} = DSPyBridge.create_program(pool, %{signature: @basic_qa})

    assert {:ok, %{"outputs" => %{"answer" => "D"}, "lm" => "mock/default"}} =
             DSPyBridge.execute_program(pool, plain, inputs, %{"timeout" => 20_000})

    assert_raise ArgumentError, ~r/not both/, fn ->
      DSPyBridge.execute_program(pool, id, inputs, %{lm: "mock", lm_config: "mock"})
    end

    assert_raise ArgumentError, ~r/"lm_confg"/, fn ->
      DSPyBridge.execute_program(pool, id, inputs, %{"lm_confg" => "mock"})
    end
  end

  test "named signatures: worker-level and session ones, replayed into a restarted worker" do
    pool = start_pool(size: 1, default_lm: [model: "mock/sig", extra: %{default: "A"}])
    s = "sigs"

    assert {:ok, %{"scope" => "worker", "replaced" => false}} =
             DSPyBridge.register_signature(pool, "BasicQA", @basic_qa)

    assert {:ok, %{"scope" => "session", "replaced" => false}} =
             DSPyBridge.register_signature(pool, :Summ, "text -> summary", session: s)

    assert {:ok, %{"name" => "BasicQA", "signature" => %{"inputs" => [_], "outputs" => [_]}}} =
             DSPyBridge.get_signature(pool, "BasicQA", session: s)

    {:ok, %{"signatures" => listed}} = DSPyBridge.list_signatures(pool, session: s)
    assert listed |> Enum.map(& &1["name"]) |> Enum.sort() == ["BasicQA", "Summ"]

    {:ok, %{"program_id" => qa}} =
      DSPyBridge.create_program(pool, %{signature: %{ref: "BasicQA"}}, session: s)

    {:ok, %{"program_id" => summ}} =
      DSPyBridge.create_program(pool, %{signature: %{ref: "Summ"}}, session: s)

    # the name now holds another signature: the program keeps the one it was made from
    {:ok, %{"replaced" => true}} =
      DSPyBridge.register_signature(pool, "BasicQA", "question -> reply")

    {:ok, _} = DSPyBridge.register_signature(pool, "Gone", "a -> b")
    {:ok, _} = DSPyBridge.delete_signature(pool, "Gone")

    :ok = DSPyBridge.subscribe(pool)
    [{0, _, os_pid, _}] = Pool.workers(pool)
    kill9(os_pid)

    assert_receive {:dspy_bridge_event,
                    %Event{name: "replayed", data: %{"failed" => 0, "commands" => n}}},
                   30_000

    assert n > 0

    assert {:ok, %{"outputs" => %{"answer" => "A"}}} =
             DSPyBridge.execute(pool, qa, %{question: "q"}, session: s)

    assert {:ok, %{"outputs" => %{"summary" => "A"}}} =
             DSPyBridge.execute(pool, summ, %{text: "t"}, session: s)

    assert {:ok, %{"signature" => %{"outputs" => [%{"name" => "reply"}]}}} =
             DSPyBridge.get_signature(pool, "BasicQA")

    assert {:ok, %{"scope" => "session"}} = DSPyBridge.get_signature(pool, "Summ", session: s)
    assert {:error, %Error{type: :not_found}} = DSPyBridge.get_signature(pool, "Gone")

    # a program made from a name after the restart finds it too
    assert {:ok, %{"program_id" => _}} =
             DSPyBridge.create_program(pool, %{signature: %{ref: "Summ"}}, session: s)

    {:ok, _} = DSPyBridge.delete_signature(pool, "Summ", session: s)
    assert {:error, %Error{type: :not_found}} = DSPyBridge.get_signature(pool, "Summ", session: s)
  end
end
