defmodule DSPyBridge.Worker.StartFailure do
  @moduledoc false
  # Why a worker could not start, told in full: the interpreter, how it was
  # chosen, the first lines of its stderr (kept by DSPyBridge.Worker.Stderr
  # until the worker is ready) and the setting to change.

  alias DSPyBridge.Error
  alias DSPyBridge.Worker.Stderr

  # how long the end of a failed worker's stderr is waited for
  @stderr_wait_ms 1_000

  @type start :: %{cmd: map(), stderr: pid() | nil, ready_timeout: non_neg_integer()}

  @doc "The worker is ready: its start-up stderr is not needed."
  @spec discard(start() | nil) :: :ok
  def discard(%{stderr: stderr}), do: Stderr.started(stderr)
  def discard(_), do: :ok

  @doc "The error for an interpreter that cannot be executed (`reason` from the file system)."
  @spec not_executable(map(), String.t()) :: Error.t()
  def not_executable(cmd, reason),
    do: error(cmd, "could not be executed (#{reason})", nil, [])

  @doc "The error for a worker that exited with `status` before sending `ready`."
  @spec exited(start(), integer()) :: Error.t()
  def exited(start, status) do
    lines = Stderr.first_lines(start.stderr, @stderr_wait_ms)
    error(start.cmd, "exited with status #{status} before sending ready", status, lines)
  end

  @doc "The error for a worker that did not send `ready` in time (and was killed)."
  @spec timed_out(start()) :: Error.t()
  def timed_out(start) do
    what = "did not send ready within #{start.ready_timeout} ms (it was killed)"
    error(start.cmd, what, nil, Stderr.first_lines(start.stderr, @stderr_wait_ms))
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
