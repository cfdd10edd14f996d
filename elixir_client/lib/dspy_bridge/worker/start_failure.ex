defmodule DSPyBridge.Worker.StartFailure do
  @moduledoc false
  # Why a worker could not start, told in full. The worker is started through
  # /bin/sh, which sends the worker's stderr through awk on a fifo: awk passes
  # every line on to the BEAM's stderr (as without the wrapper) and copies the
  # first lines to a temporary file, ending it with a marker when the stream
  # ends. The shell then execs the interpreter, so the OS pid, the exit status
  # and stdin/stdout (the port) are the worker's own. Without /bin/sh, awk or
  # mkfifo the worker is started directly and no stderr is captured.
  #
  # Once the worker is ready the file is removed (awk may still write a few
  # lines to the unlinked file); when it fails to start, the file is read into
  # the error's details.

  alias DSPyBridge.Error

  @lines 20
  @end_marker "\x01end"

  @script ~S"""
  log=$1; fifo=$2; shift 2
  if command -v awk >/dev/null 2>&1 && command -v mkfifo >/dev/null 2>&1 &&
    command -v rm >/dev/null 2>&1 && : >"$log" 2>/dev/null &&
    mkfifo -m 600 "$fifo" 2>/dev/null; then
    awk -v n=__LINES__ '{ print > "/dev/stderr"; fflush("/dev/stderr") } NR <= n { print; fflush() } END { printf "\001end\n"; fflush() }' >"$log" <"$fifo" &
    exec 4>"$fifo"
    rm -f "$fifo"
    exec "$@" 2>&4 4>&-
  fi
  rm -f "$log" 2>/dev/null
  exec "$@"
  """

  @type start :: %{cmd: map(), log: String.t() | nil, ready_timeout: non_neg_integer()}

  @doc """
  What to spawn for `cmd` (a resolved `DSPyBridge.Command`): `{executable,
  args, start}`, `start` being what `exited/2` and `timed_out/1` need.
  """
  @spec spawn_spec(map(), non_neg_integer()) :: {String.t(), [String.t()], start()}
  def spawn_spec(cmd, ready_timeout) do
    sh = "/bin/sh"

    if File.exists?(sh) do
      base =
        Path.join(
          System.tmp_dir!(),
          "dspy_bridge_worker_#{System.pid()}_#{System.unique_integer([:positive])}"
        )

      log = base <> ".stderr"
      script = String.replace(@script, "__LINES__", Integer.to_string(@lines))
      args = ["-c", script, "dspy_bridge_worker", log, base <> ".fifo", cmd.python | cmd.args]
      {sh, args, %{cmd: cmd, log: log, ready_timeout: ready_timeout}}
    else
      {cmd.python, cmd.args, %{cmd: cmd, log: nil, ready_timeout: ready_timeout}}
    end
  end

  @doc "The worker is ready: its start-up stderr is not needed."
  @spec discard(start() | nil) :: :ok
  def discard(%{log: log}) when is_binary(log) do
    _ = File.rm(log)
    :ok
  end

  def discard(_), do: :ok

  @doc "The error for an interpreter that cannot be executed (`reason` from the file system)."
  @spec not_executable(map(), String.t()) :: Error.t()
  def not_executable(cmd, reason),
    do: error(cmd, "could not be executed (#{reason})", nil, [])

  @doc "The error for a worker that exited with `status` before sending `ready`."
  @spec exited(start(), integer()) :: Error.t()
  def exited(start, status) do
    error(start.cmd, "exited with status #{status} before sending ready", status, read(start))
  end

  @doc "The error for a worker that did not send `ready` in time (and was killed)."
  @spec timed_out(start()) :: Error.t()
  def timed_out(start) do
    what = "did not send ready within #{start.ready_timeout} ms (it was killed)"
    error(start.cmd, what, nil, read(start))
  end

  # Waits (briefly) for awk to see the end of the stream, then reads and
  # removes the file.
  defp read(%{log: nil}), do: []

  defp read(%{log: log} = start) do
    text = await_end(log, System.monotonic_time(:millisecond) + 1_000)
    discard(start)

    text
    |> String.split(@end_marker)
    |> hd()
    |> String.split("\n", trim: true)
    |> Enum.take(@lines)
  end

  defp await_end(log, deadline) do
    text =
      case File.read(log) do
        {:ok, text} -> text
        {:error, _} -> ""
      end

    cond do
      String.contains?(text, @end_marker) ->
        text

      System.monotonic_time(:millisecond) > deadline ->
        text

      true ->
        Process.sleep(10)
        await_end(log, deadline)
    end
  end

  defp error(cmd, what, exit_status, stderr) do
    fix = fix(cmd, stderr)

    quoted =
      case stderr do
        [] -> "It wrote nothing on stderr."
        lines -> "Its stderr began:\n" <> Enum.map_join(lines, "\n", &("    " <> &1))
      end

    message =
      "the dspy_bridge worker could not start: #{cmd.python} #{what}.\n" <>
        "Arguments: #{inspect(cmd.args)}.\n#{quoted}\n#{fix}"

    Error.new(:worker_exited, message,
      retryable: false,
      details: %{
        "reason" => "start_failed",
        "python" => cmd.python,
        "args" => cmd.args,
        "exit_status" => exit_status,
        "stderr" => Enum.join(stderr, "\n"),
        "fix" => fix
      }
    )
  end

  defp fix(cmd, stderr) do
    setting =
      "This interpreter was chosen by #{source(cmd[:source])}. To choose another, set " <>
        "(first one wins) the `:python` option of the pool or worker, " <>
        "`config :dspy_bridge, python: \"/path/to/python\"`, or the DSPY_BRIDGE_PYTHON " <>
        "environment variable; with none of them set, the virtualenv of `mix dspy_bridge.setup` " <>
        "(_build/dspy_bridge/venv), else the repository's .venv is used, " <>
        "else `python3` on the PATH."

    if Enum.any?(stderr, &(&1 =~ ~r/No module named '?dspy_bridge'?/)) do
      "#{cmd.python} does not have the dspy_bridge package: install it into that " <>
        "interpreter (`#{cmd.python} -m pip install #{repo_root()}`, or run " <>
        "`mix dspy_bridge.setup`) or choose another " <>
        "interpreter. " <> setting
    else
      setting
    end
  end

  defp source(:option), do: "the `:python` option"
  defp source(:config), do: "`config :dspy_bridge, python:`"
  defp source(:env), do: "the DSPY_BRIDGE_PYTHON environment variable"
  defp source(:setup), do: "the virtualenv of `mix dspy_bridge.setup` (no setting was given)"
  defp source(:venv), do: "the repository's .venv (no setting was given)"
  defp source(:path), do: "`python3` on the PATH (no setting was given)"
  defp source(_), do: "an unknown setting"

  # The repository root: the parent of the Mix project's directory.
  defp repo_root, do: Path.expand("../../../..", __DIR__)
end
