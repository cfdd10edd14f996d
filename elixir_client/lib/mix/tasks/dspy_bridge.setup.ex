defmodule Mix.Tasks.DspyBridge.Setup do
  @shortdoc "Creates a Python virtualenv with the dspy_bridge worker installed"

  @moduledoc """
  Creates a Python virtualenv and installs the worker package into it, for
  an application that depends on `:dspy_bridge` (a path or git dependency:
  the Python package is the repository the Elixir client lives in).

      mix dspy_bridge.setup [--venv PATH] [--source PATH] [--python PATH]
                            [--no-deps] [--system-site-packages]

  Steps:

    1. `<python> -m venv <venv>` (`--python`, default `python3` on the
       `PATH`; `--system-site-packages` is passed on);
    2. `<venv>/bin/python -m pip install <source>`, where `<source>` is the
       repository root: `--source`, else the parent of the `:dspy_bridge`
       dependency's directory (`Mix.Project.deps_paths/0`), else the
       parent of this project when it is `:dspy_bridge` itself. A normal run
       installs the worker's Python dependencies (dspy, msgpack, pydantic,
       structlog) from PyPI, or whatever index pip is configured with;
       `--no-deps` installs only the worker (for offline set-ups whose
       dependencies are already importable, e.g. with
       `--system-site-packages`);
    3. checks the result with `<venv>/bin/python -P -m dspy_bridge --version`;
    4. prints the line to add to your config.

  The default `<venv>` is `_build/dspy_bridge/venv` (next to the build
  directories of the Mix environments). The client uses that virtualenv
  when no interpreter is set (see `DSPyBridge.Command`), so the config line
  is only needed for another `--venv` or a release.

  This is not a hex package task: hex is not used by `:dspy_bridge`.
  """

  use Mix.Task

  @switches [
    venv: :string,
    source: :string,
    python: :string,
    deps: :boolean,
    system_site_packages: :boolean
  ]

  @impl Mix.Task
  @spec run([String.t()]) :: :ok
  def run(argv) do
    {opts, rest, invalid} = OptionParser.parse(argv, strict: @switches)

    if rest != [] or invalid != [] do
      Mix.raise("mix dspy_bridge.setup: unexpected arguments #{inspect(rest ++ invalid)}")
    end

    source = Path.expand(opts[:source] || default_source())
    venv = Path.expand(opts[:venv] || default_venv())
    base = opts[:python] || System.find_executable("python3") || "python3"

    unless File.exists?(Path.join(source, "pyproject.toml")) do
      Mix.raise("mix dspy_bridge.setup: no pyproject.toml in #{source} (give --source PATH)")
    end

    venv_args = if opts[:system_site_packages], do: ["--system-site-packages"], else: []
    cmd!(base, ["-m", "venv"] ++ venv_args ++ [venv])

    python = Path.join(venv, "bin/python")
    deps_args = if opts[:deps] == false, do: ["--no-deps"], else: []
    cmd!(python, ["-m", "pip", "install", "--quiet"] ++ deps_args ++ [source])

    version = cmd!(python, ["-P", "-m", "dspy_bridge", "--version"])
    Mix.shell().info("Installed #{String.trim(version)} into #{venv}")

    Mix.shell().info("""
    The client uses #{default_venv()} by default. For another virtualenv, add to your config:

        config :dspy_bridge, python: "#{python}"
    """)

    :ok
  end

  @doc "The default virtualenv: `_build/dspy_bridge/venv` of the current project."
  @spec default_venv() :: String.t()
  def default_venv, do: Path.join(Path.dirname(Mix.Project.build_path()), "dspy_bridge/venv")

  defp default_source do
    cond do
      dep = Mix.Project.deps_paths()[:dspy_bridge] -> Path.dirname(dep)
      Mix.Project.config()[:app] == :dspy_bridge -> Path.dirname(File.cwd!())
      true -> Mix.raise("mix dspy_bridge.setup: :dspy_bridge is not a dependency; give --source")
    end
  end

  defp cmd!(exe, args) do
    Mix.shell().info("* running #{Enum.join([exe | args], " ")}")

    case System.cmd(exe, args, stderr_to_stdout: true) do
      {out, 0} -> out
      {out, status} -> Mix.raise("#{exe} #{Enum.join(args, " ")} failed (#{status}):\n#{out}")
    end
  rescue
    e in ErlangError ->
      Mix.raise("mix dspy_bridge.setup: cannot run #{exe}: #{Exception.message(e)}")
  end
end
