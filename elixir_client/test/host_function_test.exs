defmodule DSPyBridge.HostFunctionTest do
  # The pure parts of host functions: specs, calls and their answers, the
  # worker's table of running callbacks, the replay records. No process.
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog

  alias DSPyBridge.{HostFunction, MsgPack}
  alias DSPyBridge.Pool.Store
  alias DSPyBridge.Worker.Callbacks

  def add(args, n), do: {:ok, args["x"] + n}

  defp decoded({bin, _shape}) do
    {:ok, value} = MsgPack.decode(bin)
    value
  end

  describe "split!/1" do
    test "a spec becomes its wire declaration and its implementation" do
      run = fn _ -> :ok end

      assert {%{"name" => "lookup", "description" => "d", "parameters" => params}, ^run} =
               HostFunction.split!(
                 name: :lookup,
                 description: "d",
                 parameters: [type: "object", properties: %{id: %{type: "string"}}],
                 run: run
               )

      assert params == %{"type" => "object", "properties" => %{"id" => %{"type" => "string"}}}

      assert {%{"name" => "m"} = decl, {__MODULE__, :add, [1]}} =
               HostFunction.split!(%{"name" => "m", "run" => {__MODULE__, :add, [1]}})

      refute Map.has_key?(decl, "description")
      assert {_, f2} = HostFunction.split!(%{name: "two", run: fn _, _ -> 1 end})
      assert is_function(f2, 2)
    end

    test "a spec without a name or run, with a bad run, or with unknown keys is refused" do
      assert_raise ArgumentError, ~r/:name/, fn -> HostFunction.split!(run: fn _ -> 1 end) end
      assert_raise ArgumentError, ~r/:run/, fn -> HostFunction.split!(name: "x") end

      assert_raise ArgumentError, ~r/:run/, fn ->
        HostFunction.split!(name: "x", run: fn -> 1 end)
      end

      assert_raise ArgumentError, ~r/unknown key/, fn ->
        HostFunction.split!(name: "x", run: fn _ -> 1 end, descripton: "typo")
      end

      assert_raise ArgumentError, ~r/map or keyword/, fn -> HostFunction.split!("x") end
    end

    test "spec?/1 tells an inline spec from a name" do
      assert HostFunction.spec?(%{name: "x", run: &Function.identity/1})
      assert HostFunction.spec?(%{"name" => "x", "run" => &Function.identity/1})
      assert HostFunction.spec?(name: "x", run: &Function.identity/1)
      refute HostFunction.spec?("x")
      refute HostFunction.spec?(%{name: "x"})
      refute HostFunction.spec?(nil)
    end
  end

  describe "call/3 and answer/4" do
    test "a result, {:ok, v} and an MFA with extra args" do
      assert HostFunction.call(fn %{"x" => x} -> x * 2 end, %{"x" => 2}, %{}) == {:ok, 4}
      assert HostFunction.call(fn _ -> {:ok, "v"} end, %{}, %{}) == {:ok, "v"}
      assert HostFunction.call({__MODULE__, :add, [10]}, %{"x" => 1}, %{}) == {:ok, 11}

      assert HostFunction.call(fn _, ctx -> ctx.purpose end, %{}, %{purpose: "tool"}) ==
               {:ok, "tool"}

      assert {:ok, encoded} =
               HostFunction.answer(
                 "cb-1",
                 fn _ -> [status: :shipped, items: [%{n: 1}]] end,
                 %{},
                 %{}
               )

      assert decoded(encoded) == %{
               "callback_id" => "cb-1",
               "result" => %{"status" => "shipped", "items" => [%{"n" => 1}]}
             }
    end

    test "{:error, reason} in its forms" do
      assert {:error, %{"message" => "no order", "retryable" => false} = e} =
               HostFunction.call(fn _ -> {:error, "no order"} end, %{}, %{})

      refute Map.has_key?(e, "type")

      assert {:error, %{"message" => "busy", "type" => "rate_limit", "retryable" => true}} =
               HostFunction.call(
                 fn _ -> {:error, %{message: "busy", type: :rate_limit, retryable: true}} end,
                 %{},
                 %{}
               )

      assert {:error, %{"message" => "kw"}} =
               HostFunction.call(fn _ -> {:error, message: "kw"} end, %{}, %{})

      assert {:error, %{"message" => "not_found"}} =
               HostFunction.call(fn _ -> {:error, :not_found} end, %{}, %{})

      assert {:error, %{"message" => "bad", "type" => "ArgumentError"}} =
               HostFunction.call(fn _ -> {:error, %ArgumentError{message: "bad"}} end, %{}, %{})

      assert {:error, %{"message" => "{:weird, 1}"}} =
               HostFunction.call(fn _ -> {:error, {:weird, 1}} end, %{}, %{})
    end

    test "a raise, throw or exit is an error answer, never a crash" do
      log =
        capture_log(fn ->
          assert {:exception, %{"message" => "RuntimeError: boom", "type" => "exception"}} =
                   HostFunction.call(fn _ -> raise "boom" end, %{}, %{function: "t"})

          assert {:exception, %{"message" => "threw :ball", "type" => "throw"}} =
                   HostFunction.call(fn _ -> throw(:ball) end, %{}, %{})

          assert {:exception, %{"message" => "exited: " <> _, "type" => "exit"}} =
                   HostFunction.call(fn _ -> exit(:gone) end, %{}, %{})

          assert {:exception, %{"message" => "FunctionClauseError: " <> _}} =
                   HostFunction.call(fn %{"never" => _} -> 1 end, %{}, %{})
        end)

      assert log =~ "boom"
    end

    test "an unencodable result is an error answer" do
      assert {:unencodable, encoded} = HostFunction.answer("cb-2", fn _ -> {1, 2} end, %{}, %{})

      assert %{
               "callback_id" => "cb-2",
               "error" => %{"type" => "unencodable_result", "message" => message}
             } = decoded(encoded)

      assert message =~ "{1, 2}"
      assert {:unencodable, _} = HostFunction.answer("cb-3", fn _ -> self() end, %{}, %{})
    end

    test "error messages and types are held to the protocol's lengths, in code points" do
      long = String.duplicate("é", 10_000)

      assert {:error, %{"message" => m, "type" => t}} =
               HostFunction.call(
                 fn _ -> {:error, %{message: long, type: String.duplicate("t", 500)}} end,
                 %{},
                 %{}
               )

      assert String.length(m) == 8_192 and String.valid?(m)
      assert String.length(t) == 100

      assert %{"error" => %{"message" => "late", "type" => "timeout", "retryable" => true}} =
               decoded(HostFunction.error_reply("cb-9", "late", "timeout", true))
    end
  end

  describe "Worker.Callbacks" do
    defp entry(id) do
      %{
        id: id,
        ref: make_ref(),
        pid: self(),
        function: "f",
        purpose: "tool",
        session_id: "s",
        request_id: 1,
        timeout_ms: 1_000,
        timer: nil,
        started: 0
      }
    end

    test "an entry is found by ref or by callback id, and leaves once" do
      a = entry("cb-1")
      b = entry("cb-2")
      t = Callbacks.new() |> Callbacks.put(a) |> Callbacks.put(b)
      assert Callbacks.size(t) == 2

      assert {^a, t} = Callbacks.pop_ref(t, a.ref)
      assert {nil, t} = Callbacks.pop_id(t, "cb-1")
      assert {^b, t} = Callbacks.pop_id(t, "cb-2")
      assert {nil, t} = Callbacks.pop_ref(t, b.ref)
      assert Callbacks.size(t) == 0
    end

    test "take_all/1 empties the table" do
      t = Callbacks.new() |> Callbacks.put(entry("cb-1")) |> Callbacks.put(entry("cb-2"))
      assert {[_, _], t} = Callbacks.take_all(t)
      assert Callbacks.size(t) == 0
    end
  end

  describe "Pool.Store records of host functions" do
    setup do
      table = Store.new(:"host_fn_store_#{System.unique_integer([:positive])}")
      %{table: table}
    end

    test "tools are replayed first, one register_tools per session, in registration order",
         %{table: table} do
      run = fn _ -> :ok end
      decl = fn name -> %{"name" => name, "description" => "d #{name}"} end

      Store.apply_record(table, {:put_lm, "s", %{"model" => "mock"}}, {:ok, %{}})

      Store.apply_record(
        table,
        {:put_tools, "s", [decl.("a"), decl.("b")], %{"a" => run, "b" => run}},
        {:ok, %{}}
      )

      Store.apply_record(
        table,
        {:put_program, "s", "create_program", %{"program_id" => "p"}},
        {:ok, %{"program_id" => "p"}}
      )

      Store.apply_record(
        table,
        {:put_tools, nil, [decl.("shared")], %{"shared" => run}},
        {:ok, %{}}
      )

      # registering "a" again replaces it and keeps its place
      new_a = %{"name" => "a", "description" => "newer"}
      Store.apply_record(table, {:put_tools, "s", [new_a], %{"a" => run}}, {:ok, %{}})

      assert [tools, [{"configure_lm", _}], [{"create_program", _}]] =
               Store.replay_batches(table, 0, 1)

      assert tools == [
               {"register_tools", %{"session_id" => "s", "tools" => [new_a, decl.("b")]}},
               {"register_tools", %{"tools" => [decl.("shared")]}}
             ]

      assert %{tools: 3, programs: 1, sessions: 1} = Store.counts(table)
    end

    test "functions are found by session; the default session is \"default\" on the wire",
         %{table: table} do
      f = fn _ -> 1 end
      g = fn _ -> 2 end
      Store.apply_record(table, {:put_tools, "s", [%{"name" => "t"}], %{"t" => f}}, {:ok, %{}})
      Store.apply_record(table, {:put_tools, nil, [%{"name" => "t"}], %{"t" => g}}, {:ok, %{}})

      assert Store.host_function(table, "s", "t") == {:ok, f}
      assert Store.host_function(table, "default", "t") == {:ok, g}
      assert Store.host_function(table, "other", "t") == :error
      assert Store.host_function(table, "s", "u") == :error

      Store.apply_record(table, {:delete_tool, "s", "t"}, {:ok, %{}})
      assert Store.host_function(table, "s", "t") == :error
      assert [[], [], []] = Store.replay_batches(table, 0, 2) |> Enum.map(&reject_default/1)

      Store.apply_record(table, {:put_tools, "s", [%{"name" => "t"}], %{"t" => f}}, {:ok, %{}})
      Store.forget_session(table, "s")
      assert Store.host_function(table, "s", "t") == :error
      assert Store.host_function(table, "default", "t") == {:ok, g}
    end

    defp reject_default(batch),
      do: Enum.reject(batch, fn {_, args} -> not is_map_key(args, "session_id") end)
  end
end
