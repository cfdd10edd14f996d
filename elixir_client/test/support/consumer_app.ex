defmodule DSPyBridge.Test.ConsumerApp do
  @moduledoc """
  Scaffolding for the tests that use the client as an application depending
  on it would: a copy of the repository to depend on, the Python paths that
  let `mix dspy_bridge.setup --no-deps` and its worker run offline, commands
  run for real.
  """

  import ExUnit.Assertions

  alias DSPyBridge.Command

  @doc """
  Copies what a checkout provides (the Python package's sources, the client's
  `mix.exs` and `lib/`) to `base/repo`; returns `{repo, client}`. A copy
  because pip builds in its source tree, and the repository's own `build/`
  holds the editable install the other tests run on.
  """
  @spec copy_repo!(Path.t()) :: {Path.t(), Path.t()}
  def copy_repo!(base) do
    repo = Path.join(base, "repo")

    for entry <- ~w(pyproject.toml README.md LICENSE bridge protocol elixir_client/mix.exs
                    elixir_client/lib) do
      File.mkdir_p!(Path.dirname(Path.join(repo, entry)))
      File.cp_r!(Path.join(Command.repo_root(), entry), Path.join(repo, entry))
    end

    {repo, Path.join(repo, "elixir_client")}
  end

  @doc """
  A `PYTHONPATH` directory under `base` holding only msgpack, the one
  dependency `dspy_bridge --version` imports: with the whole of the
  repository's site-packages on the path, pip would see its `dspy_bridge`
  distribution and install nothing.
  """
  @spec setup_pythonpath!(Path.t()) :: Path.t()
  def setup_pythonpath!(base) do
    dir = Path.join(base, "pythonpath")
    File.mkdir_p!(dir)
    File.ln_s!(Path.join(site_packages(), "msgpack"), Path.join(dir, "msgpack"))
    dir
  end

  @doc """
  The repository virtualenv's site-packages: on `PYTHONPATH`, it gives a
  worker installed with `--no-deps` its dependencies (dspy, pydantic,
  structlog, msgpack...) but not the repository's own `dspy_bridge`, an
  editable install activated by a `.pth` file, which Python reads in site
  directories only, never in `PYTHONPATH` entries.
  """
  @spec site_packages() :: Path.t()
  def site_packages do
    [dir] = Path.wildcard(Path.join(Command.repo_root(), ".venv/lib/python*/site-packages"))
    dir
  end

  @doc """
  The repository virtualenv's interpreter, the base of the venvs the tests
  make: the packages they borrow from `site_packages/0` are built for its
  Python version.
  """
  @spec python() :: Path.t()
  def python, do: Path.join(Command.repo_root(), ".venv/bin/python")

  @doc "Runs a command (stderr with stdout), asserts it succeeded; returns its output."
  @spec cmd!(String.t(), [String.t()], keyword()) :: String.t()
  def cmd!(exe, args, opts) do
    {out, status} = System.cmd(exe, args, [stderr_to_stdout: true] ++ opts)
    assert status == 0, "#{exe} #{Enum.join(args, " ")} exited with #{status}:\n#{out}"
    out
  end

  @doc "Replaces `from` (which must be there) with `to` in a file."
  @spec edit!(Path.t(), String.t(), String.t()) :: :ok
  def edit!(path, from, to) do
    text = File.read!(path)
    assert text =~ from, "#{path} has no #{inspect(from)}:\n#{text}"
    File.write!(path, String.replace(text, from, to, global: false))
  end
end
