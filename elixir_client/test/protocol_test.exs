defmodule DSPyBridge.ProtocolTest do
  use ExUnit.Case, async: true

  alias DSPyBridge.{Error, MsgPack, Protocol}

  defp encode!(limits \\ Protocol.default_limits(), id, command, args, timeout_ms) do
    {:ok, encoded} = Protocol.encode_args(args)
    {:ok, frame} = Protocol.encode_request(limits, id, command, encoded, timeout_ms)
    IO.iodata_to_binary(frame)
  end

  describe "encode_request/5" do
    test "builds the request envelope around the pre-encoded args" do
      frame = encode!(7, "ping", %{"a" => [1, 2]}, nil)

      assert MsgPack.decode(frame) ==
               {:ok, %{"id" => 7, "command" => "ping", "args" => %{"a" => [1, 2]}}}
    end

    test "adds timeout_ms when given" do
      frame = encode!(8, "sleep", %{"ms" => 1}, 1_500)

      assert {:ok,
              %{"id" => 8, "command" => "sleep", "args" => %{"ms" => 1}, "timeout_ms" => 1_500}} =
               MsgPack.decode(frame)
    end

    test "nil args are an empty map" do
      assert {:ok, %{"args" => %{}}} = MsgPack.decode(encode!(1, "ping", nil, nil))
    end

    test "refuses a frame over max_frame_bytes, with its size" do
      limits = %{Protocol.default_limits() | max_frame_bytes: 40}
      {:ok, encoded} = Protocol.encode_args(%{"v" => String.duplicate("x", 40)})

      assert {:error,
              %Error{
                type: :limit_exceeded,
                retryable: false,
                details: %{"limit" => "max_frame_bytes", "max_frame_bytes" => 40, "size" => size}
              }} = Protocol.encode_request(limits, 1, "echo", encoded, nil)

      assert size > 40
    end

    test "refuses a frame nested deeper than max_depth (the envelope is a level)" do
      nest = fn n -> Enum.reduce(1..n, 1, fn _, acc -> [acc] end) end
      {:ok, ok} = Protocol.encode_args(%{"v" => nest.(2)})
      {:ok, deep} = Protocol.encode_args(%{"v" => nest.(3)})
      limits = %{Protocol.default_limits() | max_depth: 4}

      assert {:ok, _} = Protocol.encode_request(limits, 1, "echo", ok, nil)

      assert {:error,
              %Error{
                type: :limit_exceeded,
                details: %{"limit" => "max_depth", "max_depth" => 4, "depth" => 5}
              }} = Protocol.encode_request(limits, 1, "echo", deep, nil)
    end

    test "refuses a frame with more items than max_frame_items, only when there is a limit" do
      {:ok, encoded} = Protocol.encode_args(%{"v" => [1, 2, 3]})
      # envelope 1 + 3 pairs * 2 = 7, args map 1 + 2 = 3, list 1 + 3 = 4: 14 items
      assert {:ok, _} =
               Protocol.encode_request(Protocol.default_limits(), 1, "echo", encoded, nil)

      limits = %{Protocol.default_limits() | max_frame_items: 14}
      assert {:ok, _} = Protocol.encode_request(limits, 1, "echo", encoded, nil)

      limits = %{limits | max_frame_items: 13}

      assert {:error,
              %Error{
                type: :limit_exceeded,
                details: %{"limit" => "max_frame_items", "max_frame_items" => 13, "items" => 14}
              }} = Protocol.encode_request(limits, 1, "echo", encoded, nil)

      # timeout_ms adds one pair
      limits = %{limits | max_frame_items: 15}
      assert {:error, _} = Protocol.encode_request(limits, 1, "echo", encoded, 100)
    end
  end

  test "encode_args/1 refuses what msgpack cannot carry" do
    assert {:error, %Error{type: :invalid_args}} = Protocol.encode_args(%{"bad" => <<255, 0>>})
  end

  test "shape/1 measures depth and items as the worker does" do
    assert Protocol.shape(1) == {0, 0}
    assert Protocol.shape(%MsgPack.Bin{data: <<1, 2>>}) == {0, 0}
    assert Protocol.shape([]) == {1, 1}
    assert Protocol.shape([1, [2]]) == {2, 5}
    assert Protocol.shape(%{"a" => 1}) == {1, 3}
    assert Protocol.shape(%{[1] => %{"b" => 2}}) == {2, 8}
  end

  test "limits_from_ready/1 takes positive integers and defaults the rest" do
    assert Protocol.limits_from_ready(%{"event" => "ready"}) == Protocol.default_limits()

    assert Protocol.limits_from_ready(%{
             "limits" => %{"max_frame_bytes" => 4096, "max_depth" => 0, "max_frame_items" => 10}
           }) == %{max_frame_bytes: 4096, max_depth: 128, max_frame_items: 10}

    assert %{max_frame_bytes: 67_108_864, max_frame_items: nil} =
             Protocol.limits_from_ready(%{"limits" => %{"max_frame_bytes" => "big"}})
  end

  describe "decode/1" do
    test "an event is a map with a string event and no id" do
      frame = MsgPack.encode!(%{"event" => "ready", "worker_id" => "w"})
      assert {:event, "ready", %{"worker_id" => "w"}} = Protocol.decode(frame)
    end

    test "a response is a map with an id (even with an event key)" do
      frame = MsgPack.encode!(%{"id" => 3, "event" => "x", "success" => true})
      assert {:response, 3, %{"success" => true}} = Protocol.decode(frame)
      assert {:response, nil, _} = Protocol.decode(MsgPack.encode!(%{"id" => nil}))
    end

    test "anything else is unexpected" do
      assert {:unexpected, "an unexpected message: " <> _} = Protocol.decode(MsgPack.encode!([1]))
      assert {:unexpected, "an undecodable frame" <> _} = Protocol.decode(<<0xC1>>)
    end
  end

  test "to_reply/1 and outcome/1" do
    assert Protocol.to_reply(%{"success" => true, "result" => 1}) == {:ok, 1}
    assert Protocol.to_reply(%{"success" => true}) == {:ok, nil}

    assert {:error, %Error{type: :not_found}} =
             Protocol.to_reply(%{"success" => false, "error" => %{"type" => "not_found"}})

    assert {:error, %Error{type: :internal, details: %{"response" => %{"id" => 1}}}} =
             Protocol.to_reply(%{"id" => 1})

    assert Protocol.outcome(%{"success" => true}) == "ok"
    assert Protocol.outcome(%{"error" => %{"type" => "timeout"}}) == "timeout"
    assert Protocol.outcome(%{"error" => "?"}) == "malformed"
  end
end
