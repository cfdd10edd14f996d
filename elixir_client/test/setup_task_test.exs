defmodule DSPyBridge.SetupTaskTest do
  # `mix dspy_bridge.setup` run for real, as an application depending on
  # :dspy_bridge runs it: a fresh Mix project with a path dependency on a copy
  # of this repository's client, a real `python3 -m venv` and a real
  # `pip install` of that copy. Offline and fast: `--no-deps`, with the one dependency
  # `--version` imports (msgpack) made importable through PYTHONPATH (a
  # normal run installs the dependencies from PyPI).
  use ExUnit.Case, async: true

  import DSPyBridge.Test.Helpers

  alias DSPyBridge.Test.ConsumerApp

  @moduletag timeout: 240_000

  setup :tmp_dir_setup

  test "creates the default venv, installs the worker, and the client finds it", %{base: base} do
    app = Path.join(base, "consumer")
    File.mkdir_p!(app)
    {_repo, client} = ConsumerApp.copy_repo!(base)

    File.write!(Path.join(app, "mix.exs"), """
    defmodule Consumer.MixProject do
      use Mix.Project

      def project,
        do: [app: :consumer, version: "0.1.0", deps: [{:dspy_bridge, path: #{inspect(client)}}]]
    end
    """)

    deps = ConsumerApp.setup_pythonpath!(base)
    env = [{"MIX_ENV", "dev"}, {"PYTHONPATH", deps}]

    {out, status} =
      System.cmd("mix", ["dspy_bridge.setup", "--no-deps"],
        cd: app,
        env: env,
        stderr_to_stdout: true
      )

    assert status == 0, out
    python = Path.join(app, "_build/dspy_bridge/venv/bin/python")
    assert out =~ "Installed dspy-bridge "
    assert out =~ ~s(config :dspy_bridge, python: "#{python}")

    # installed into the venv itself, not found elsewhere
    assert {origin, 0} =
             System.cmd(python, ["-P", "-c", "import dspy_bridge; print(dspy_bridge.__file__)"])

    assert String.starts_with?(origin, Path.join(app, "_build/dspy_bridge/venv/"))

    # with no setting, the application's client chooses that venv
    {resolved, 0} =
      System.cmd(
        "mix",
        ["run", "--no-start", "-e", "IO.inspect(DSPyBridge.Command.resolve([]))"],
        cd: app,
        env: [{"MIX_ENV", "dev"}, {"DSPY_BRIDGE_PYTHON", nil}],
        stderr_to_stdout: true
      )

    assert resolved =~ "source: :setup", resolved
    assert resolved =~ ~s(python: "#{python}"), resolved
  end

  test "a missing source is reported with the option to give", %{base: base} do
    venv = Path.join(base, "v")

    assert_raise Mix.Error, ~r/no pyproject.toml in #{base} \(give --source PATH\)/, fn ->
      Mix.Tasks.DspyBridge.Setup.run(["--source", base, "--venv", venv])
    end

    refute File.exists?(venv)
  end
end
