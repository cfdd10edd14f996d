defmodule DSPyBridge.DocTest do
  use ExUnit.Case, async: true

  doctest DSPyBridge.Error
  doctest DSPyBridge.Pool

  alias DSPyBridge.Error

  test "unknown error types from a newer worker become :internal, keeping the type" do
    assert %Error{type: :internal, details: %{"type" => "brand_new"}, retryable: true} =
             Error.from_wire(%{"type" => "brand_new", "message" => "m", "retryable" => true})
  end

  test "every protocol error type maps to its atom" do
    for type <- Error.types() -- [:worker_exited, :overloaded] do
      assert %Error{type: ^type} =
               Error.from_wire(%{"type" => Atom.to_string(type), "message" => ""})
    end
  end

  test "errors are exceptions with a readable message" do
    error = Error.new(:timeout, "too slow")
    assert Exception.message(error) == "timeout: too slow"
    assert error.retryable
    assert_raise Error, "timeout: too slow", fn -> raise error end
  end

  test "keyword arguments are normalized to string-keyed maps, recursively" do
    assert DSPyBridge.normalize(
             extra: [responses: %{"q" => "a"}, latency_ms: 5],
             list: [[a: 2], 3]
           ) ==
             %{
               "extra" => %{"responses" => %{"q" => "a"}, "latency_ms" => 5},
               "list" => [%{"a" => 2}, 3]
             }
  end
end
