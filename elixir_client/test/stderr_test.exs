defmodule DSPyBridge.StderrTest do
  # The worker's stderr, read on its own pipe, into Logger (with the worker's,
  # the request's and the session's metadata) or through to the BEAM's stderr;
  # and one transcript per worker. Real workers over real ports; an Erlang
  # :logger handler of this test's own sees what reaches Logger.
  use ExUnit.Case, async: false

  import DSPyBridge.Test.Helpers

  alias DSPyBridge.{JSON, Pool}
  alias DSPyBridge.Worker.Stderr

  defmodule Handler do
    @moduledoc false
    # An Erlang :logger handler sending each event of a dspy_bridge worker's
    # stderr (those with an `os_pid`) to the test process.
    def log(%{meta: %{os_pid: _} = meta, msg: msg, level: level}, %{config: %{test: test}}),
      do: send(test, {:logged, level, text(msg), meta})

    def log(_event, _config), do: :ok

    defp text({:string, chardata}), do: IO.chardata_to_string(chardata)
    defp text({:report, report}), do: inspect(report)
    defp text({format, args}), do: IO.chardata_to_string(:io_lib.format(format, args))
  end

  setup do
    id = :"stderr_test_#{System.unique_integer([:positive])}"
    :ok = :logger.add_handler(id, Handler, %{config: %{test: self()}})
    on_exit(fn -> :logger.remove_handler(id) end)
    :ok
  end

  defp start_pool(opts) do
    name = pool_name("stderr")
    start_supervised!({Pool, worker_opts([name: name, size: 1] ++ opts)})
    name
  end

  defp await_logged(pred) do
    receive do
      {:logged, level, text, meta} = logged ->
        if pred.(level, text, meta), do: logged, else: await_logged(pred)
    after
      10_000 -> flunk("no such log event")
    end
  end

  # The first event each of `preds` matches, in the order of `preds`.
  defp await_each(preds, found \\ %{}) do
    if map_size(found) == length(preds) do
      Enum.map(0..(length(preds) - 1), &found[&1])
    else
      {:logged, level, text, meta} = logged = await_logged(fn _, _, _ -> true end)

      matched =
        preds
        |> Enum.with_index()
        |> Enum.find(fn {pred, i} -> not Map.has_key?(found, i) and pred.(level, text, meta) end)

      case matched do
        {_, i} -> await_each(preds, Map.put(found, i, logged))
        nil -> await_each(preds, found)
      end
    end
  end

  test "a request's line is logged at its level with the worker's and the request's metadata" do
    pool = start_pool(log_level: "info")
    [{0, _, os_pid, _}] = Pool.workers(pool)

    assert {:ok, _} = DSPyBridge.configure_lm(pool, [model: "mock"], session: "tenant-a")

    {:logged, :info, text, meta} =
      await_logged(fn _, text, meta ->
        meta[:command] == "configure_lm" and text =~ "worker: request "
      end)

    assert text =~ "dspy_bridge worker: request "
    assert text =~ "outcome=ok"
    assert meta.pool == pool
    assert meta.worker == 0
    assert meta.os_pid == os_pid
    assert meta.session_id == "tenant-a"
    assert is_integer(meta.request_id)
    assert is_binary(meta.worker_id)
  end

  test "a library's print is a warning naming its request; raw writes arrive as they are" do
    pool = start_pool([])

    assert {:ok, %{"written" => 3}} =
             DSPyBridge.request(pool, "stdout_noise", %{text: "noise-42\n"})

    # the print, as a JSON line; os.write(1) and a child's echo, as plain text
    # (in any order: they are written by different writers)
    printed = fn _, text, _ -> text =~ "dspy_bridge worker: printed" end
    raw = fn _, text, _ -> text == "dspy_bridge worker stderr: noise-42" end

    [{:logged, :warning, text, meta}, {:logged, :warning, _, raw_meta}] =
      await_each([printed, raw])

    assert text =~ "text=noise-42"
    assert meta.command == "stdout_noise"
    assert is_integer(meta.request_id)
    assert raw_meta.pool == pool
  end

  test "stderr: :passthrough copies the lines to the BEAM's stderr instead" do
    output =
      ExUnit.CaptureIO.capture_io(:stderr, fn ->
        pool = start_pool(stderr: :passthrough, log_level: "info")
        assert {:ok, _} = DSPyBridge.request(pool, "sleep", %{ms: 1})
        stop_supervised!(pool)
      end)

    assert output =~ ~s("event": "request")
    assert output =~ ~s("command": "sleep")
    refute_received {:logged, _, _, _}
  end

  describe "pure parts" do
    test "levels, labels and messages of decoded lines" do
      assert Stderr.level("warning") == :warning
      assert Stderr.level("exception") == :error
      assert Stderr.level("critical") == :critical
      assert Stderr.level(nil) == :info

      assert Stderr.labels(%{"id" => 7, "command" => "ping", "other" => 1}) ==
               [request_id: 7, command: "ping"]

      message =
        Stderr.message("request", %{"outcome" => "ok", "note" => "two words", "n" => [1]})
        |> IO.iodata_to_binary()

      assert message == ~s(dspy_bridge worker: request n=[1] note="two words" outcome=ok)
    end

    test "the JSON the worker writes decodes; what is not JSON is an error, never a crash" do
      assert JSON.decode(~s({"a": "\\ud83d\\ude00 \\u00e9", "b": [1, 2.5, null, true]})) ==
               {:ok, %{"a" => "😀 é", "b" => [1, 2.5, nil, true]}}

      for bad <- [
            ~s({"a": NaN}),
            ~s({"a": "\\ud83d"}),
            ~s({"a": "\\ud83d\\u0041"}),
            "{\"a\": \"\xff\"}",
            "Traceback (most recent call last):",
            ~s({"a": 1} trailing),
            ~s({"a": "unterminated),
            ~s({"a": "\\x"})
          ] do
        assert JSON.decode(bad) == :error, bad
      end
    end
  end
end
