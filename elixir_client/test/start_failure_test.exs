defmodule DSPyBridge.StartFailureTest do
  # Workers that cannot start, with real processes: the error names the
  # interpreter tried, quotes its first stderr lines and names the setting.
  use ExUnit.Case, async: true

  import DSPyBridge.Test.Helpers

  alias DSPyBridge.{Error, Pool, Worker}

  @setting "DSPY_BRIDGE_PYTHON"

  defp assert_start_error(%Error{} = error, python, stderr_line) do
    assert %Error{type: :worker_exited, retryable: false, details: details} = error
    assert %{"reason" => "start_failed", "python" => ^python, "fix" => fix} = details
    assert is_list(details["args"])
    assert error.message =~ "could not start: #{python}"
    assert error.message =~ fix
    assert fix =~ "`:python` option"
    assert fix =~ "config :dspy_bridge, python:"
    assert fix =~ @setting
    if stderr_line, do: assert(details["stderr"] =~ stderr_line)

    for line <- String.split(stderr_line || "", "\n", trim: true),
        do: assert(error.message =~ line)

    error
  end

  test "a python: path that does not exist: start_link returns the error at once" do
    Process.flag(:trap_exit, true)

    assert {:error, {:spawn_failed, "/nonexistent/python3", error}} =
             Worker.start_link(python: "/nonexistent/python3")

    error = assert_start_error(error, "/nonexistent/python3", nil)
    assert error.message =~ "no such file"
    assert error.details["exit_status"] == nil
    assert error.details["args"] == ["-P", "-m", "dspy_bridge"]
  end

  test "a pool whose python: path does not exist returns the error" do
    Process.flag(:trap_exit, true)

    assert {:error, %Error{} = error} =
             Pool.start_link(name: pool_name(), size: 2, python: "/nonexistent/python3")

    assert_start_error(error, "/nonexistent/python3", nil)
  end

  test "a file that is not executable cannot be the interpreter" do
    Process.flag(:trap_exit, true)
    path = Path.join(System.tmp_dir!(), "not_exec_#{System.unique_integer([:positive])}")
    File.write!(path, "")
    on_exit(fn -> File.rm(path) end)

    assert {:error, {:spawn_failed, ^path, error}} = Worker.start_link(python: path)
    assert assert_start_error(error, path, nil).message =~ "not executable"
  end

  test "a worker that exits at once: its status and stderr are in the error" do
    Process.flag(:trap_exit, true)
    script = "echo boom >&2; echo second line >&2; exit 3"
    {:ok, pid} = Worker.start_link(python: "/bin/sh", args: ["-c", script])

    assert {:error, error} = Worker.await_ready(pid)
    error = assert_start_error(error, "/bin/sh", "boom\nsecond line")
    assert error.details["exit_status"] == 3
    assert error.details["args"] == ["-c", script]
    assert error.message =~ "exited with status 3"

    assert_receive {:EXIT, ^pid, {:shutdown, {:worker_start_failed, ^error}}}, 2_000
  end

  test "only the first 20 lines of stderr are kept" do
    Process.flag(:trap_exit, true)
    script = "for i in $(seq 1 30); do echo line$i >&2; done; exit 1"
    {:ok, pid} = Worker.start_link(python: "/bin/sh", args: ["-c", script])

    assert {:error, error} = Worker.await_ready(pid)
    lines = String.split(error.details["stderr"], "\n")
    assert length(lines) == 20
    assert hd(lines) == "line1" and List.last(lines) == "line20"
  end

  test "a pool whose workers exit at once returns the error" do
    Process.flag(:trap_exit, true)

    assert {:error, %Error{} = error} =
             Pool.start_link(
               name: pool_name(),
               size: 2,
               python: "/bin/sh",
               args: ["-c", "echo boom >&2; exit 3"]
             )

    assert_start_error(error, "/bin/sh", "boom")
  end

  test "an interpreter without the dspy_bridge package: the fix says to install it" do
    Process.flag(:trap_exit, true)
    python = "/usr/bin/python3"
    # an environment that hides the repository's virtualenv
    env = [{"PYTHONPATH", nil}, {"VIRTUAL_ENV", nil}, {"PYTHONHOME", nil}]
    cd = System.tmp_dir!()

    {_, status} =
      System.cmd(python, ["-P", "-c", "import dspy_bridge"],
        env: env,
        cd: cd,
        stderr_to_stdout: true
      )

    assert status != 0, "#{python} must not have dspy_bridge installed for this test"

    {:ok, pid} =
      Worker.start_link(python: python, args: ["-P", "-m", "dspy_bridge"], env: env, cd: cd)

    assert {:error, error} = Worker.await_ready(pid)
    error = assert_start_error(error, python, "No module named dspy_bridge")
    assert error.details["exit_status"] == 1
    assert error.details["fix"] =~ "pip install #{Path.expand("../..", __DIR__)}"
    assert error.message =~ "does not have the dspy_bridge package"
  end

  test "a worker that never sends ready: the error after :ready_timeout has its stderr" do
    Process.flag(:trap_exit, true)

    {:ok, pid} =
      Worker.start_link(
        python: "/bin/sh",
        args: ["-c", "echo waiting forever >&2; exec sleep 30"],
        ready_timeout: 200
      )

    os_pid = Worker.os_pid(pid)
    assert {:error, error} = Worker.await_ready(pid)
    error = assert_start_error(error, "/bin/sh", "waiting forever")
    assert error.message =~ "did not send ready within 200 ms"
    assert_receive {:EXIT, ^pid, {:shutdown, :ready_timeout}}, 2_000
    await_os_exit(os_pid, 2_000)
  end

  test "a worker that is ready keeps no start-up lines, and its stderr fifo is gone" do
    pid = start_supervised!({Worker, worker_opts()}, restart: :temporary)
    :ok = Worker.await_ready(pid)
    {_state, data} = :sys.get_state(pid)
    stderr = :sys.get_state(data.start.stderr)
    assert stderr.ready and stderr.first == []
    refute File.exists?(stderr.fifo)
  end
end
