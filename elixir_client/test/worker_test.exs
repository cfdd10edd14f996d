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

  test "when the owning GenServer is killed outright, the worker exits on EOF" do
    {:ok, pid} = GenServer.start(Worker, worker_opts())
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

  defp send_sleep(pid, ms, opts \\ []) do
    {:ok, request} = Worker.send_request(pid, "sleep", %{ms: ms}, opts)
    request
  end
end
