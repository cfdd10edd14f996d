defmodule DSPyBridge.Worker.RequestTest do
  use ExUnit.Case, async: true

  alias DSPyBridge.{Error, MsgPack}
  alias DSPyBridge.Worker.Request

  test "message/4 encodes and measures the args in the caller" do
    assert {:ok, {:request, "ping", {bin, {1, 3}}, 30_000, nil, nil}} =
             Request.message(:ping, %{"a" => 1}, [], nil)

    assert MsgPack.decode(bin) == {:ok, %{"a" => 1}}

    assert {:ok, {:request, "x", _, 5, {:put_cache, %{}}, :load}} =
             Request.message("x", %{}, [timeout: 5, record: {:put_cache, %{}}], :load)
  end

  test "message/4 refuses args msgpack cannot carry" do
    assert {:error, %Error{type: :invalid_args}} = Request.message("x", %{"f" => self()}, [], nil)
  end

  test "new/2 keeps the message's fields" do
    {:ok, msg} = Request.message("sleep", %{"ms" => 1}, [timeout: 100], nil)
    req = Request.new(:from, msg)
    assert %Request{from: :from, command: "sleep", timeout: 100, timer: nil} = req
    assert is_integer(req.started)
  end

  test "timeout_ms/2: what is left of the timeout plus the margin; nil without a timeout" do
    {:ok, msg} = Request.message("x", %{}, [timeout: 10_000], nil)
    req = Request.new(:from, msg)
    ms = Request.timeout_ms(req, 1_000)
    assert ms > 10_000 and ms <= 11_000

    late = %{
      req
      | started: System.monotonic_time() - System.convert_time_unit(60, :second, :native)
    }

    assert Request.timeout_ms(late, 1_000) == 1_001

    assert Request.timeout_ms(%{req | timeout: :infinity}, 1_000) == nil
  end

  test "start_timer/2 starts one timer, none for :infinity" do
    {:ok, msg} = Request.message("x", %{}, [timeout: 50], nil)
    req = Request.start_timer(Request.new(:from, msg), 7)
    assert is_reference(req.timer)
    assert Request.start_timer(req, 8).timer == req.timer
    assert_receive {:timeout, _, {:req_timeout, 7}}, 1_000

    inf = Request.start_timer(%{Request.new(:from, msg) | timeout: :infinity}, 9)
    assert inf.timer == nil
  end

  test "timeout_error/1 names the command" do
    {:ok, msg} = Request.message("execute_program", %{}, [], nil)

    assert %Error{type: :timeout, message: "execute_program did not complete" <> _} =
             Request.timeout_error(Request.new(:from, msg))
  end
end
