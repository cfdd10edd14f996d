defmodule DSPyBridge.TelemetryTest do
  # Every event of DSPyBridge.Telemetry, from real workers. The handlers are
  # attached with :telemetry's own API (attach_many/4, detach/1), so this runs
  # against the real library once it is a dependency; until then (Hex cannot
  # be reached here) against the stand-in in test/support/fake_telemetry.ex.
  # Each test's handler takes only its own pool's events, so tests run
  # concurrently.
  use ExUnit.Case, async: true

  import DSPyBridge.Test.Helpers

  alias DSPyBridge.{Error, Event, Pool}

  @moduletag timeout: 120_000

  # generous: a worker's start (Python, its imports) is in some of these waits
  @wait 30_000

  setup do
    pool = pool_name("telemetry")
    handler = {__MODULE__, pool}

    :ok =
      :telemetry.attach_many(
        handler,
        DSPyBridge.Telemetry.events(),
        &__MODULE__.forward/4,
        %{pid: self(), pool: pool}
      )

    on_exit(fn -> :telemetry.detach(handler) end)
    assert DSPyBridge.Telemetry.refresh()
    %{pool: pool}
  end

  @doc false
  # The handler: runs in the emitting process (the worker's).
  def forward(event, measurements, metadata, %{pid: pid, pool: pool}) do
    if pool_of(metadata) == pool, do: send(pid, {:telemetry_event, event, measurements, metadata})
  end

  defp pool_of(%{event: %Event{pool: pool}}), do: pool
  defp pool_of(metadata), do: metadata[:pool]

  defp start_pool(pool, opts) do
    start_supervised!({Pool, worker_opts(Keyword.merge([name: pool, size: 1], opts))})
    pool
  end

  # A worker that waits for the file `gate` to exist before it starts.
  defp gated_worker_opts(gate) do
    script = """
    import os, runpy, sys, time
    while not os.path.exists(#{inspect(gate)}):
        time.sleep(0.01)
    sys.argv = ["dspy_bridge"] + sys.argv[1:]
    runpy.run_module("dspy_bridge", run_name="__main__", alter_sys=True)
    """

    [python: venv_python(), args: ["-c", script]]
  end

  defp venv_python, do: Path.join(DSPyBridge.Command.repo_root(), ".venv/bin/python")

  test "every event's name is listed" do
    events = DSPyBridge.Telemetry.events()

    for kind <- [:start, :stop, :exception],
        do: assert([:dspy_bridge, :request, kind] in events)

    for kind <- [:start, :stop, :overloaded], do: assert([:dspy_bridge, :queue, kind] in events)
    for kind <- [:start, :replay, :exit], do: assert([:dspy_bridge, :worker, kind] in events)
    assert [:dspy_bridge, :event] in events
  end

  test "a request: :start when the worker takes it, :stop with its outcome", %{pool: pool} do
    start_pool(pool, [])
    {:ok, _} = DSPyBridge.ping(pool)

    assert_receive {:telemetry_event, [:dspy_bridge, :request, :start],
                    %{system_time: _, monotonic_time: started},
                    %{command: "ping", pool: ^pool, worker: 0}},
                   @wait

    assert_receive {:telemetry_event, [:dspy_bridge, :request, :stop],
                    %{duration: duration, monotonic_time: stopped},
                    %{command: "ping", outcome: :ok, pool: ^pool, worker: 0}}

    assert is_integer(duration) and duration > 0
    assert stopped > started

    # an error answer is a :stop too, its type the outcome
    {:error, %Error{type: :unknown_command}} = DSPyBridge.request(pool, "no_such_command")

    assert_receive {:telemetry_event, [:dspy_bridge, :request, :start], _,
                    %{command: "no_such_command"}}

    assert_receive {:telemetry_event, [:dspy_bridge, :request, :stop], %{duration: _},
                    %{command: "no_such_command", outcome: :unknown_command, worker: 0}}
  end

  test "a request whose timeout runs out ends with a :stop, outcome :timeout", %{pool: pool} do
    start_pool(pool, [])

    assert {:error, %Error{type: :timeout}} =
             DSPyBridge.request(pool, "sleep", %{ms: 10_000}, timeout: 100)

    assert_receive {:telemetry_event, [:dspy_bridge, :request, :stop], %{duration: _},
                    %{command: "sleep", outcome: :timeout, pool: ^pool, worker: 0}}
  end

  test "beyond :max_in_flight a request waits in the queue; a full queue refuses it",
       %{pool: pool} do
    start_pool(pool, max_in_flight: 1, max_queue: 1)
    first = Task.async(fn -> DSPyBridge.request(pool, "sleep", %{ms: 500}) end)

    assert_receive {:telemetry_event, [:dspy_bridge, :request, :start], _, %{command: "sleep"}},
                   @wait

    queued = Task.async(fn -> DSPyBridge.request(pool, "echo", %{value: "queued"}) end)

    assert_receive {:telemetry_event, [:dspy_bridge, :queue, :start],
                    %{system_time: _, monotonic_time: _, queued: 1},
                    %{command: "echo", reason: :max_in_flight, pool: ^pool, worker: 0}}

    assert {:error, %Error{type: :overloaded}} =
             DSPyBridge.request(pool, "echo", %{value: "refused"})

    assert_receive {:telemetry_event, [:dspy_bridge, :queue, :overloaded],
                    %{system_time: _, in_flight: 1, queued: 1},
                    %{command: "echo", pool: ^pool, worker: 0}}

    assert_receive {:telemetry_event, [:dspy_bridge, :request, :stop], _,
                    %{command: "echo", outcome: :overloaded}}

    assert {:ok, %{"slept_ms" => 500}} = Task.await(first)
    assert {:ok, _} = Task.await(queued)

    assert_receive {:telemetry_event, [:dspy_bridge, :queue, :stop],
                    %{duration: waited, monotonic_time: _},
                    %{command: "echo", outcome: :sent, pool: ^pool, worker: 0}}

    assert is_integer(waited) and waited > 0

    assert_receive {:telemetry_event, [:dspy_bridge, :request, :stop], _,
                    %{command: "echo", outcome: :ok}}
  end

  test "a queued request whose timeout runs out leaves the queue with :timeout",
       %{pool: pool} do
    start_pool(pool, max_in_flight: 1)
    first = Task.async(fn -> DSPyBridge.request(pool, "sleep", %{ms: 1_000}) end)

    assert_receive {:telemetry_event, [:dspy_bridge, :request, :start], _, %{command: "sleep"}},
                   @wait

    assert {:error, %Error{type: :timeout}} =
             DSPyBridge.request(pool, "echo", %{value: 1}, timeout: 50)

    assert_receive {:telemetry_event, [:dspy_bridge, :queue, :start], _,
                    %{command: "echo", reason: :max_in_flight}}

    assert_receive {:telemetry_event, [:dspy_bridge, :queue, :stop], %{duration: _},
                    %{command: "echo", outcome: :timeout}}

    assert_receive {:telemetry_event, [:dspy_bridge, :request, :stop], _,
                    %{command: "echo", outcome: :timeout}}

    assert {:ok, _} = Task.await(first)
  end

  test "a request to a worker still starting waits (:not_ready); then the worker's :start",
       %{pool: pool} do
    {:ok, base: base} = tmp_dir_setup()
    gate = Path.join(base, "start")
    start_pool(pool, [await_ready: false] ++ gated_worker_opts(gate))

    call = Task.async(fn -> DSPyBridge.request(pool, "echo", %{value: 1}, timeout: @wait) end)

    assert_receive {:telemetry_event, [:dspy_bridge, :queue, :start], %{queued: 1},
                    %{command: "echo", reason: :not_ready, pool: ^pool, worker: 0}},
                   @wait

    File.write!(gate, "")

    assert_receive {:telemetry_event, [:dspy_bridge, :worker, :start],
                    %{system_time: _, monotonic_time: _, startup_duration: startup},
                    %{pool: ^pool, worker: 0, os_pid: os_pid}},
                   @wait

    assert is_integer(startup) and startup > 0

    assert_receive {:telemetry_event, [:dspy_bridge, :queue, :stop], %{duration: _},
                    %{command: "echo", outcome: :sent}},
                   @wait

    assert {:ok, 1} = Task.await(call, @wait)
    assert [{0, _, ^os_pid, :ready}] = Pool.workers(pool)
  end

  test "a worker killed with a request in flight: :exit, the request's :stop, a new :start",
       %{pool: pool} do
    start_pool(pool, [])

    assert_receive {:telemetry_event, [:dspy_bridge, :worker, :start], _,
                    %{pool: ^pool, worker: 0, os_pid: os_pid}}

    call = Task.async(fn -> DSPyBridge.request(pool, "sleep", %{ms: 10_000}) end)

    assert_receive {:telemetry_event, [:dspy_bridge, :request, :start], _, %{command: "sleep"}},
                   @wait

    kill9(os_pid)

    assert_receive {:telemetry_event, [:dspy_bridge, :worker, :exit],
                    %{system_time: _, duration: lived, in_flight: 1},
                    %{pool: ^pool, worker: 0, os_pid: ^os_pid, exit_status: 137, reason: :exited}},
                   @wait

    assert is_integer(lived) and lived > 0

    assert_receive {:telemetry_event, [:dspy_bridge, :request, :stop], _,
                    %{command: "sleep", outcome: :worker_exited}}

    assert {:error, %Error{type: :worker_exited}} = Task.await(call)

    assert_receive {:telemetry_event, [:dspy_bridge, :worker, :start], _,
                    %{pool: ^pool, worker: 0, os_pid: restarted}},
                   @wait

    assert restarted != os_pid
  end

  test "a pool that stops: each worker's :exit, reason :shutdown", %{pool: pool} do
    start_pool(pool, size: 2)
    stop_supervised!(pool)

    for index <- [0, 1] do
      assert_receive {:telemetry_event, [:dspy_bridge, :worker, :exit], %{in_flight: 0},
                      %{pool: ^pool, worker: ^index, reason: :shutdown}},
                     @wait
    end
  end

  test "a recycled worker: :exit (:recycled), then its new OS process's :start",
       %{pool: pool} do
    start_pool(pool, max_requests: 1)

    assert_receive {:telemetry_event, [:dspy_bridge, :worker, :start], _,
                    %{pool: ^pool, os_pid: os_pid}}

    {:ok, _} = DSPyBridge.ping(pool)

    assert_receive {:telemetry_event, [:dspy_bridge, :worker, :exit], %{in_flight: 0},
                    %{pool: ^pool, worker: 0, os_pid: ^os_pid, reason: :recycled}},
                   @wait

    assert_receive {:telemetry_event, [:dspy_bridge, :worker, :start], _,
                    %{pool: ^pool, worker: 0, os_pid: fresh}},
                   @wait

    assert fresh != os_pid
  end

  test "a worker that exits before ready: :exit, reason :start_failed", %{pool: pool} do
    Process.flag(:trap_exit, true)

    assert {:error, %Error{}} =
             Pool.start_link(
               name: pool,
               size: 1,
               python: "/bin/sh",
               args: ["-c", "exit 3"]
             )

    assert_receive {:telemetry_event, [:dspy_bridge, :worker, :exit], %{in_flight: 0},
                    %{pool: ^pool, worker: 0, exit_status: 3, reason: :start_failed}},
                   @wait
  end

  @tag :dspy
  test "the default LM is replayed into each new OS process: :replay", %{pool: pool} do
    start_pool(pool, default_lm: [model: "mock"])

    assert_receive {:telemetry_event, [:dspy_bridge, :worker, :start], _,
                    %{pool: ^pool, os_pid: os_pid}},
                   @wait

    assert_receive {:telemetry_event, [:dspy_bridge, :worker, :replay],
                    %{duration: _, commands: 1, failed: 0},
                    %{pool: ^pool, worker: 0, os_pid: ^os_pid}},
                   @wait

    kill9(os_pid)

    assert_receive {:telemetry_event, [:dspy_bridge, :worker, :replay], %{commands: 1},
                    %{pool: ^pool, worker: 0, os_pid: restarted}},
                   @wait

    assert restarted != os_pid
  end

  @tag :dspy
  test "a caller whose on_chunk raises: the request's :exception, and it is abandoned",
       %{pool: pool} do
    start_pool(pool, log_level: "error")
    s = "raiser"
    answer = "one two three four five six seven eight nine ten"

    {:ok, _} =
      DSPyBridge.configure_lm(
        pool,
        [model: "mock/stream", extra: %{default: answer, latency_ms: 5_000}],
        session: s
      )

    {:ok, _} =
      DSPyBridge.create_program(pool, [signature: "question -> answer", program_id: "qa"],
        session: s
      )

    assert_raise RuntimeError, "no more chunks", fn ->
      DSPyBridge.execute(pool, "qa", %{question: "Count."},
        session: s,
        on_chunk: fn _ -> raise "no more chunks" end
      )
    end

    assert_receive {:telemetry_event, [:dspy_bridge, :request, :exception],
                    %{duration: duration, monotonic_time: _},
                    %{
                      command: "execute_program",
                      pool: ^pool,
                      worker: 0,
                      kind: :error,
                      reason: %RuntimeError{message: "no more chunks"},
                      stacktrace: [_ | _]
                    }},
                   @wait

    assert is_integer(duration) and duration > 0

    # cancelled in the worker: its answer, when it comes, is dropped
    assert_receive {:telemetry_event, [:dspy_bridge, :event], _,
                    %{
                      event: %Event{name: "late_reply_dropped", data: %{"command" => cmd}},
                      pool: ^pool,
                      worker: 0
                    }},
                   @wait

    assert cmd == "execute_program"

    refute_received {:telemetry_event, [:dspy_bridge, :request, :stop], _,
                     %{command: "execute_program"}}
  end
end
