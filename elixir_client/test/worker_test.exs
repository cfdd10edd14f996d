defmodule DSPyBridge.WorkerTest do
  # Real Python workers through real ports, control commands only (no DSPy).
  use ExUnit.Case, async: true

  import DSPyBridge.Test.Helpers

  alias DSPyBridge.{Error, Event, Worker}

  defp start_worker(extra \\ []) do
    opts = worker_opts([on_event: self()] ++ extra)
    pid = start_supervised!({Worker, opts}, restart: :temporary)
    :ok = Worker.await_ready(pid)
    pid
  end

  test "waits for ready, then serves; ping reports the OS pid of the port" do
    pid = start_worker()
    os_pid = Worker.os_pid(pid)
    assert_received {:dspy_bridge_event, %Event{name: "ready", source: :worker, data: ready}}
    assert ready["protocol_version"] == 1
    assert ready["pid"] == os_pid

    assert {:ok, %{"status" => "ok", "pid" => ^os_pid}} = Worker.request(pid, "ping")
    assert %{status: :ready, os_pid: ^os_pid, in_flight: 0} = Worker.info(pid)
  end

  test "multiplexes concurrent requests and answers each caller, whatever the order" do
    pid = start_worker()

    tasks =
      for ms <- [300, 200, 100, 1, 50, 150, 0, 250] do
        Task.async(fn ->
          {ms, Worker.request(pid, "sleep", %{ms: ms}), System.monotonic_time(:millisecond)}
        end)
      end

    results = Task.await_many(tasks)

    for {ms, reply, _} <- results, do: assert(reply == {:ok, %{"slept_ms" => ms}})

    # out of order: a slow request sent first is still running when a fast
    # one sent after it has been answered
    slow = send_sleep(pid, 2_000)
    fast = send_sleep(pid, 0)
    assert Worker.await_response(fast) == {:ok, %{"slept_ms" => 0}}
    assert %{in_flight: 1} = Worker.info(pid)
    assert Worker.await_response(slow) == {:ok, %{"slept_ms" => 2_000}}
  end

  test "unknown commands and bad args come back as typed errors" do
    pid = start_worker()

    assert {:error, %Error{type: :unknown_command, retryable: false}} =
             Worker.request(pid, "no_such_command")

    assert {:error, %Error{type: :invalid_args, details: %{} = details}} =
             Worker.request(pid, "sleep", %{ms: "soon"})

    assert details != %{}

    assert {:error, %Error{type: :invalid_args}} = Worker.request(pid, "echo", %{bad: <<255, 0>>})
  end

  test "a timed-out call gets :timeout, the worker is sent cancel, and the late reply is dropped" do
    pid = start_worker()
    started = System.monotonic_time(:millisecond)

    assert {:error, %Error{type: :timeout, retryable: true}} =
             Worker.request(pid, "sleep", %{ms: 5_000}, timeout: 100)

    elapsed = System.monotonic_time(:millisecond) - started
    assert elapsed < 1_000

    # The cancel stops the work: the worker answers `cancelled` long before
    # the 5 s sleep would have ended, and that late answer is dropped.
    assert_receive {:dspy_bridge_event,
                    %Event{name: "late_reply_dropped", data: %{"outcome" => "cancelled"} = data}},
                   2_000

    assert data["command"] == "sleep"
    assert System.monotonic_time(:millisecond) - started < 2_500

    # Later requests get their own answers; nothing stray reached this process.
    for ms <- [1, 2, 3] do
      assert {:ok, %{"slept_ms" => ^ms}} = Worker.request(pid, "sleep", %{ms: ms})
    end

    {:messages, messages} = Process.info(self(), :messages)
    assert Enum.filter(messages, &match?({ref, _} when is_reference(ref), &1)) == []

    assert %{timeouts: 1, cancels_sent: 1, late_replies_dropped: 1, in_flight: 0} =
             Worker.info(pid)
  end

  test "in-flight callers get :worker_exited at once when the OS process dies" do
    Process.flag(:trap_exit, true)
    {:ok, pid} = Worker.start_link(worker_opts(on_event: self()))
    :ok = Worker.await_ready(pid)
    os_pid = Worker.os_pid(pid)
    requests = for _ <- 1..5, do: send_sleep(pid, 10_000, timeout: 20_000)
    # ordered after the requests: once it answers, all five are in flight
    assert %{in_flight: 5} = Worker.info(pid)
    started = System.monotonic_time(:millisecond)
    kill9(os_pid)

    for request <- requests do
      assert {:error, %Error{type: :worker_exited, retryable: true}} =
               Worker.await_response(request)
    end

    assert System.monotonic_time(:millisecond) - started < 2_000
    assert_receive {:EXIT, ^pid, {:shutdown, {:worker_exited, _status}}}, 2_000
    assert_receive {:dspy_bridge_event, %Event{name: "worker_exited", data: %{"in_flight" => 5}}}
  end

  test "stopping the GenServer shuts the OS process down before stop returns" do
    {:ok, pid} = Worker.start_link(worker_opts())
    :ok = Worker.await_ready(pid)
    os_pid = Worker.os_pid(pid)
    assert os_alive?(os_pid)
    :ok = GenServer.stop(pid)
    refute os_alive?(os_pid)
  end

  test "stopping lets in-flight work finish within the grace period" do
    {:ok, pid} = Worker.start_link(worker_opts(shutdown_grace: 3_000))
    :ok = Worker.await_ready(pid)
    os_pid = Worker.os_pid(pid)
    request = send_sleep(pid, 300)
    assert %{in_flight: 1} = Worker.info(pid)
    :ok = GenServer.stop(pid)
    assert Worker.await_response(request) == {:ok, %{"slept_ms" => 300}}
    refute os_alive?(os_pid)
  end

  test "work still running after the grace period is abandoned with :shutting_down" do
    {:ok, pid} = Worker.start_link(worker_opts(shutdown_grace: 200, kill_after: 10_000))
    :ok = Worker.await_ready(pid)
    os_pid = Worker.os_pid(pid)
    request = send_sleep(pid, 30_000, timeout: 60_000)
    assert %{in_flight: 1} = Worker.info(pid)
    :ok = GenServer.stop(pid)
    refute os_alive?(os_pid)
    assert {:error, %Error{type: :shutting_down}} = Worker.await_response(request)
  end

  test "a worker that does not exit after the grace period is killed with SIGKILL" do
    {:ok, pid} = Worker.start_link(worker_opts(shutdown_grace: 200, kill_after: 300))
    :ok = Worker.await_ready(pid)
    os_pid = Worker.os_pid(pid)
    request = send_sleep(pid, 30_000, timeout: 60_000)
    assert %{in_flight: 1} = Worker.info(pid)
    # a frozen process cannot honour `shutdown`
    {_, 0} = System.cmd("kill", ["-STOP", Integer.to_string(os_pid)])
    started = System.monotonic_time(:millisecond)
    :ok = GenServer.stop(pid)
    elapsed = System.monotonic_time(:millisecond) - started
    assert elapsed >= 500 and elapsed < 5_000
    refute os_alive?(os_pid)
    assert {:error, %Error{type: :worker_exited}} = Worker.await_response(request)
  end

  test "when the owning process is killed outright, the worker exits on EOF" do
    {:ok, pid} = Worker.start(worker_opts())
    :ok = Worker.await_ready(pid)
    os_pid = Worker.os_pid(pid)
    Process.exit(pid, :kill)
    waited = await_os_exit(os_pid, 3_000)
    IO.puts("\n  worker exited #{waited} ms after its owner was killed")
  end

  test "overflow: :error answers :overloaded beyond max_in_flight" do
    pid = start_worker(max_in_flight: 2, overflow: :error)
    requests = for _ <- 1..2, do: send_sleep(pid, 300)

    assert {:error, %Error{type: :overloaded, retryable: true}} =
             Worker.request(pid, "sleep", %{ms: 1})

    # ping is never held back by the bound
    assert {:ok, %{"status" => "ok"}} = Worker.request(pid, "ping")
    assert [{:ok, _}, {:ok, _}] = Enum.map(requests, &Worker.await_response/1)
  end

  test "overflow: :queue waits for a slot, bounded by max_queue and the timeout" do
    pid = start_worker(max_in_flight: 1, max_queue: 2)
    requests = for _ <- 1..3, do: send_sleep(pid, 100)
    assert %{in_flight: 1, queued: 2} = Worker.info(pid)
    # the queue is full now
    assert {:error, %Error{type: :overloaded}} = Worker.request(pid, "sleep", %{ms: 1})

    assert Enum.map(requests, &Worker.await_response/1) ==
             List.duplicate({:ok, %{"slept_ms" => 100}}, 3)

    assert %{in_flight: 0, queued: 0} = Worker.info(pid)
  end

  test "a queued call times out in the queue" do
    pid = start_worker(max_in_flight: 1)
    request = send_sleep(pid, 500)

    assert {:error, %Error{type: :timeout}} = Worker.request(pid, "sleep", %{ms: 1}, timeout: 50)
    assert {:ok, _} = Worker.await_response(request)
    assert %{in_flight: 0, queued: 0, cancels_sent: 0} = Worker.info(pid)
  end

  test "a worker that never sends ready is killed after :ready_timeout" do
    Process.flag(:trap_exit, true)

    {:ok, pid} =
      Worker.start_link(
        python: System.find_executable("sleep"),
        args: ["30"],
        ready_timeout: 200
      )

    os_pid = Worker.os_pid(pid)

    assert {:error, %Error{type: :worker_exited}} =
             Worker.request(pid, "ping", %{}, timeout: 5_000)

    assert_receive {:EXIT, ^pid, {:shutdown, :ready_timeout}}, 2_000
    await_os_exit(os_pid, 2_000)
  end

  test "a missing executable fails to start" do
    Process.flag(:trap_exit, true)

    assert {:error, {:spawn_failed, _, _}} =
             Worker.start_link(python: "/nonexistent/python", args: [])
  end

  describe "limits" do
    # A call over a limit would wait its whole timeout if it were sent: the
    # worker cannot read the frame, so its `invalid_frame` answer has no id.
    # Each such call below has a 10-minute timeout, so an answer within the
    # test's own timeout is an answer "at once".
    @long 600_000

    test "a request over the worker's max_frame_bytes fails at once, unsent; the boundary is exact" do
      pid = start_worker(extra_args: ["--enable-test-commands", "--max-frame-bytes", "4096"])

      assert %{max_frame_bytes: 4096, ready: %{"limits" => %{"max_frame_bytes" => 4096}}} =
               Worker.info(pid)

      # another call in flight meanwhile is not affected
      slow = send_sleep(pid, 300)
      big = String.duplicate("x", 5_000)

      assert {:error,
              %Error{
                type: :limit_exceeded,
                retryable: false,
                details: %{
                  "limit" => "max_frame_bytes",
                  "max_frame_bytes" => 4096,
                  "size" => size
                }
              }} = Worker.request(pid, "echo", %{value: big}, timeout: @long)

      assert size > 4096

      # the size is the worker's own measure: a frame of exactly 4096 bytes is
      # sent and served, one byte more is not
      fits = binary_part(big, 0, 5_000 - (size - 4096))
      assert {:ok, ^fits} = Worker.request(pid, "echo", %{value: fits}, timeout: @long)

      assert {:error, %Error{type: :limit_exceeded, details: %{"size" => 4097}}} =
               Worker.request(pid, "echo", %{value: fits <> "x"}, timeout: @long)

      assert Worker.await_response(slow) == {:ok, %{"slept_ms" => 300}}

      # nothing over the limit reached the worker
      {:ok, stats} = Worker.request(pid, "get_stats")
      assert stats["requests"]["echo"] == 1
      refute Map.has_key?(stats["errors"], "invalid_frame")
      assert %{limit_exceeded: 2, in_flight: 0, unexpected_frames: 0} = Worker.info(pid)
    end

    test "a request nested deeper than the protocol's 128 levels fails at once, unsent" do
      pid = start_worker()
      nest = fn n -> Enum.reduce(1..n, "leaf", fn _, acc -> [acc] end) end

      # the envelope and the args map are 2 levels: 126 more make 128
      assert {:ok, [_]} = Worker.request(pid, "echo", %{value: nest.(126)}, timeout: @long)

      assert {:error,
              %Error{
                type: :limit_exceeded,
                retryable: false,
                details: %{"limit" => "max_depth", "max_depth" => 128, "depth" => 129}
              }} = Worker.request(pid, "echo", %{value: nest.(127)}, timeout: @long)

      # map keys count too, as the worker counts them
      assert {:error, %Error{type: :limit_exceeded, details: %{"depth" => 129}}} =
               Worker.request(pid, "echo", %{value: %{nest.(126) => 1}}, timeout: @long)

      {:ok, stats} = Worker.request(pid, "get_stats")
      refute Map.has_key?(stats["errors"], "invalid_frame")
      assert {:ok, %{"status" => "ok"}} = Worker.request(pid, "ping")
    end

    test "a request over the worker's max_frame_items fails at once, unsent; the boundary is exact" do
      pid = start_worker(extra_args: ["--enable-test-commands", "--max-frame-items", "100"])
      assert %{ready: %{"limits" => %{"max_frame_items" => 100}}} = Worker.info(pid)

      assert {:error,
              %Error{
                type: :limit_exceeded,
                retryable: false,
                details: %{
                  "limit" => "max_frame_items",
                  "max_frame_items" => 100,
                  "items" => items
                }
              }} = Worker.request(pid, "echo", %{value: Enum.to_list(1..200)}, timeout: @long)

      # counted as the worker counts: exactly 100 items are sent and served
      fits = Enum.to_list(1..(200 - (items - 100)))
      assert {:ok, ^fits} = Worker.request(pid, "echo", %{value: fits}, timeout: @long)

      assert {:error, %Error{type: :limit_exceeded, details: %{"items" => 101}}} =
               Worker.request(pid, "echo", %{value: [0 | fits]}, timeout: @long)

      # a map's entries count twice (key and value): 43 entries make 99 items
      # in all, 44 make 101
      map = Map.new(1..43, &{&1, &1})
      assert {:ok, ^map} = Worker.request(pid, "echo", %{value: map}, timeout: @long)

      assert {:error, %Error{details: %{"items" => 101}}} =
               Worker.request(pid, "echo", %{value: Map.put(map, 44, 44)}, timeout: @long)

      {:ok, stats} = Worker.request(pid, "get_stats")
      refute Map.has_key?(stats["errors"], "invalid_frame")
    end
  end

  describe "engine failure" do
    setup :tmp_dir_setup

    test "engine_failed stops the worker; a call waiting for the engine gets its answer", %{
      base: base
    } do
      Process.flag(:trap_exit, true)
      release = Path.join(base, "release")
      {:ok, pid} = Worker.start_link(broken_engine_opts(base, release: release, on_event: self()))
      :ok = Worker.await_ready(pid)
      os_pid = Worker.os_pid(pid)
      assert {:ok, %{"engine" => "loading"}} = Worker.request(pid, "ping")

      # a DSPy command waits for the engine: it is in flight when the load fails
      {:ok, call} = Worker.send_request(pid, "configure_lm", %{model: "mock"}, timeout: 600_000)

      assert %{in_flight: 1} = Worker.info(pid)
      File.write!(release, "")

      assert_receive {:dspy_bridge_event,
                      %Event{
                        name: "engine_failed",
                        source: :worker,
                        os_pid: ^os_pid,
                        data: %{
                          "error" => %{"type" => "engine_unavailable", "message" => message}
                        }
                      }},
                     30_000

      assert message =~ "broken dspy for the test"

      assert {:error, %Error{type: :engine_unavailable, retryable: true, message: ^message}} =
               Worker.await_response(call)

      assert_receive {:EXIT, ^pid, {:shutdown, {:engine_failed, ^message}}}, 30_000
      # terminate/2 waited for the OS process
      refute os_alive?(os_pid)
    end
  end

  describe "a misbehaving worker (a fake one: the real worker never does this)" do
    alias DSPyBridge.MsgPack
    alias DSPyBridge.MsgPack.Bin

    defp start_fake do
      pid = start_supervised!({Worker, fake_worker_opts(on_event: self())}, restart: :temporary)
      :ok = Worker.await_ready(pid)
      assert_received {:dspy_bridge_event, %Event{name: "ready"}}
      pid
    end

    defp emit(pid, frames) do
      Worker.request(pid, "emit", %{frames: Enum.map(frames, &%Bin{data: &1})})
    end

    test "frames that cannot be read, are not messages, or answer no request are counted and dropped" do
      pid = start_fake()

      dropped = [
        # undecodable: reserved byte, truncated, bad UTF-8, trailing bytes, empty
        <<0xC1>>,
        <<0x92, 0x01>>,
        <<0xA2, 0xFF, 0xFE>>,
        <<0x01, 0x02>>,
        <<>>,
        # decodable, but not a message
        MsgPack.encode!(42),
        MsgPack.encode!(["a", "list"]),
        MsgPack.encode!(%{"neither" => "event nor id"}),
        MsgPack.encode!(%{"event" => %{"not" => "a name"}}),
        # answers to nobody: an unknown id, the nil id of an invalid_frame
        # answer, ids of the wrong type
        MsgPack.encode!(%{"id" => 999_999, "success" => true, "result" => 1}),
        MsgPack.encode!(%{
          "id" => nil,
          "success" => false,
          "error" => %{"type" => "invalid_frame", "message" => "?", "retryable" => false}
        }),
        MsgPack.encode!(%{"id" => "0", "success" => true, "result" => 1}),
        MsgPack.encode!(%{"id" => 0.0, "success" => true, "result" => 1}),
        # events that break the protocol's promises
        MsgPack.encode!(%{"event" => "ready", "protocol_version" => 1, "worker_id" => %{}}),
        MsgPack.encode!(%{"event" => "session_evicted", "reason" => "idle"})
      ]

      assert {:ok, "emitted"} = emit(pid, dropped)
      assert %{status: :ready, unexpected_frames: unexpected} = Worker.info(pid)
      assert unexpected == length(dropped)
      assert {:ok, %{"status" => "ok"}} = Worker.request(pid, "ping")
      refute_received {:dspy_bridge_event, %Event{name: "ready"}}
      refute_received {:dspy_bridge_event, %Event{name: "session_evicted"}}
    end

    test "an unknown event is passed on to subscribers like any other" do
      pid = start_fake()
      event = %{"event" => "from_the_future", "detail" => [1, 2]}
      assert {:ok, "emitted"} = emit(pid, [MsgPack.encode!(event)])

      assert_received {:dspy_bridge_event,
                       %Event{name: "from_the_future", source: :worker, data: ^event}}

      assert %{unexpected_frames: 0} = Worker.info(pid)
    end

    test "a malformed answer to a pending call is an :internal error for that call alone" do
      pid = start_fake()
      slow = Worker.send_request(pid, "ping", %{}) |> elem(1)

      for response <- [
            %{"success" => false},
            %{"success" => "yes", "result" => 1},
            %{"success" => false, "error" => "not a map"},
            %{"error" => nil},
            %{}
          ] do
        assert {:error, %Error{type: :internal, message: "malformed response" <> _}} =
                 Worker.request(pid, "answer", %{response: response})
      end

      # an error map whose fields have the wrong types still becomes an error
      assert {:error, %Error{} = error} =
               Worker.request(pid, "answer", %{
                 response: %{
                   "success" => false,
                   "error" => %{
                     "type" => ["not", "a", "type"],
                     "message" => %{"not" => "text"},
                     "details" => "not a map",
                     "retryable" => "yes",
                     "traceback" => 42
                   }
                 }
               })

      assert %Error{type: :internal, retryable: false, traceback: "42"} = error
      assert error.message == ~s(%{"not" => "text"})
      assert error.details == %{"value" => "not a map", "type" => ["not", "a", "type"]}

      # `success: true` with no result is a nil result
      assert {:ok, nil} = Worker.request(pid, "answer", %{response: %{"success" => true}})

      assert {:ok, %{"status" => "ok"}} = Worker.await_response(slow)
      assert %{status: :ready, in_flight: 0, unexpected_frames: 0} = Worker.info(pid)
    end

    test "an engine_failed event stops the worker even when its error is malformed" do
      Process.flag(:trap_exit, true)
      {:ok, pid} = Worker.start_link(fake_worker_opts(on_event: self()))
      :ok = Worker.await_ready(pid)
      os_pid = Worker.os_pid(pid)

      {:ok, call} =
        Worker.send_request(pid, "emit", %{
          frames: [
            %Bin{data: MsgPack.encode!(%{"event" => "engine_failed", "error" => "garbage"})}
          ]
        })

      # the worker answers the emit after the event: that answer still arrives
      assert {:ok, "emitted"} = Worker.await_response(call)
      assert_receive {:dspy_bridge_event, %Event{name: "engine_failed"}}

      assert_receive {:EXIT, ^pid, {:shutdown, {:engine_failed, "malformed error: " <> _}}},
                     10_000

      refute os_alive?(os_pid)
    end
  end

  defp send_sleep(pid, ms, opts \\ []) do
    {:ok, request} = Worker.send_request(pid, "sleep", %{ms: ms}, opts)
    request
  end
end
