defmodule DSPyBridge.Test.Helpers do
  @moduledoc "Helpers shared by the tests (real workers, real ports, real OS pids)."

  import ExUnit.Assertions

  @doc "Is an OS process with this pid running (a zombie counts as gone)?"
  @spec os_alive?(non_neg_integer()) :: boolean()
  def os_alive?(os_pid) do
    case File.read("/proc/#{os_pid}/stat") do
      {:ok, stat} ->
        # "pid (comm) state ..." — comm may contain spaces, the state follows the last ')'
        rest = stat |> String.split(")") |> List.last()
        not String.starts_with?(String.trim_leading(rest), ["Z", "X"])

      {:error, _} ->
        false
    end
  end

  @doc """
  Waits for an OS process we do not own (so cannot be notified about) to
  disappear, checking every 20 ms up to `timeout` ms. Returns how long it took.
  """
  @spec await_os_exit(non_neg_integer(), non_neg_integer()) :: non_neg_integer()
  def await_os_exit(os_pid, timeout \\ 3_000) do
    started = System.monotonic_time(:millisecond)
    do_await_os_exit(os_pid, started, started + timeout)
  end

  defp do_await_os_exit(os_pid, started, deadline) do
    now = System.monotonic_time(:millisecond)

    cond do
      not os_alive?(os_pid) ->
        now - started

      now > deadline ->
        flunk("OS process #{os_pid} still alive after #{deadline - started} ms")

      true ->
        Process.sleep(20)
        do_await_os_exit(os_pid, started, deadline)
    end
  end

  @doc "kill -9 an OS process."
  @spec kill9(non_neg_integer()) :: :ok
  def kill9(os_pid) do
    {_, 0} = System.cmd("kill", ["-9", Integer.to_string(os_pid)])
    :ok
  end

  @doc "A unique pool name for a test."
  @spec pool_name(String.t()) :: atom()
  def pool_name(prefix \\ "pool"),
    do: :"DSPyBridge.TestPool.#{prefix}#{System.unique_integer([:positive])}"

  @doc "Options for workers with test commands enabled, quiet logs and no network."
  @spec worker_opts(keyword()) :: keyword()
  def worker_opts(extra \\ []) do
    # No test may reach the network (the mock LM needs none; this keeps
    # litellm from trying to fetch metadata or send telemetry).
    env = [{"LITELLM_LOCAL_MODEL_COST_MAP", "True"}, {"LITELLM_TELEMETRY", "False"}]

    Keyword.merge(
      [extra_args: ["--enable-test-commands"], log_level: "warning", env: env],
      extra
    )
  end

  @doc "Session ids that hash to worker `index` of a pool of `size`."
  @spec sessions_on(non_neg_integer(), pos_integer(), pos_integer(), String.t()) :: [String.t()]
  def sessions_on(index, size, count, prefix \\ "s") do
    Stream.iterate(0, &(&1 + 1))
    |> Stream.map(&"#{prefix}-#{&1}")
    |> Stream.filter(&(DSPyBridge.Pool.index_for(&1, size) == index))
    |> Enum.take(count)
  end

  @doc "A fresh temporary directory, removed when the test ends (for ExUnit `setup`)."
  @spec tmp_dir_setup(map()) :: {:ok, keyword()}
  def tmp_dir_setup(_context \\ %{}) do
    base = Path.join(System.tmp_dir!(), "dspy_bridge_test_#{System.unique_integer([:positive])}")
    File.mkdir_p!(base)
    ExUnit.Callbacks.on_exit(fn -> File.rm_rf!(base) end)
    {:ok, base: base}
  end

  @doc """
  Worker options whose DSPy engine cannot load: `PYTHONPATH` points at a
  fresh directory under `base` holding a `dspy` package whose import raises
  `ImportError("broken dspy for the test")`. With `release: path`, the import
  first waits for the file `path` to exist, so a test can have calls in
  flight while the engine is still loading. The worker's start-up never
  imports dspy; only its background engine load does.
  """
  @spec broken_engine_opts(Path.t(), keyword()) :: keyword()
  def broken_engine_opts(base, extra \\ []) do
    {release, extra} = Keyword.pop(extra, :release)
    dir = Path.join(base, "broken_dspy_#{System.unique_integer([:positive])}")
    File.mkdir_p!(Path.join(dir, "dspy"))

    File.write!(Path.join([dir, "dspy", "__init__.py"]), """
    import os, time
    release = #{inspect(release || "")}
    while release and not os.path.exists(release):
        time.sleep(0.01)
    raise ImportError("broken dspy for the test")
    """)

    env = [{"PYTHONPATH", dir} | Keyword.fetch!(worker_opts(), :env)]
    # the worker logs the failed load at error level: keep the test output clean
    worker_opts(Keyword.merge([env: env, log_level: "critical"], extra))
  end

  # A stand-in worker speaking the real framing ({packet, 4} + msgpack), for
  # what the real worker never does: it sends `ready`, then for each request
  #   * `emit {frames: [bin]}` writes each bin as a frame, verbatim, then
  #     answers "emitted";
  #   * `answer {response: map}` answers with that map plus the request's id;
  #   * `ping`, `cancel`, `shutdown` answer as the real worker would (it exits
  #     after `shutdown`).
  @fake_worker """
  import os, struct, sys
  import msgpack

  stdin, stdout = sys.stdin.buffer, sys.stdout.buffer

  def write(data):
      stdout.write(struct.pack(">I", len(data)) + data)
      stdout.flush()

  def send(value):
      write(msgpack.packb(value, use_bin_type=True))

  def read():
      header = stdin.read(4)
      if len(header) < 4:
          sys.exit(0)
      (length,) = struct.unpack(">I", header)
      return msgpack.unpackb(stdin.read(length), raw=False)

  send({"event": "ready", "protocol_version": 1, "worker_id": "fake", "pid": os.getpid(),
        "commands": ["emit", "answer", "ping", "cancel", "shutdown"], "versions": {},
        "limits": {"max_frame_bytes": 67108864}})
  while True:
      request = read()
      rid, command, args = request["id"], request["command"], request.get("args", {})
      if command == "emit":
          for frame in args["frames"]:
              write(frame)
          send({"id": rid, "success": True, "result": "emitted"})
      elif command == "answer":
          send({**args["response"], "id": rid})
      elif command == "ping":
          send({"id": rid, "success": True, "result": {"status": "ok", "pid": os.getpid()}})
      elif command == "cancel":
          send({"id": rid, "success": True, "result": {"cancelled": False}})
      elif command == "shutdown":
          send({"id": rid, "success": True, "result": {"shutting_down": True}})
          sys.exit(0)
      else:
          send({"id": rid, "success": False,
                "error": {"type": "unknown_command", "message": command, "retryable": False}})
  """

  @doc "Worker options that run the fake worker above (through the repository's venv)."
  @spec fake_worker_opts(keyword()) :: keyword()
  def fake_worker_opts(extra \\ []) do
    python = Path.join(DSPyBridge.Command.repo_root(), ".venv/bin/python")
    Keyword.merge([python: python, args: ["-c", @fake_worker]], extra)
  end
end
