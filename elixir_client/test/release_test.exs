defmodule DSPyBridge.ReleaseTest do
  # The client adopted as a user would, end to end: an app made by the real
  # `mix new --sup` depends on a copy of the client by path, installs the
  # worker with `mix dspy_bridge.setup --venv` into a directory outside the app
  # and the repository, starts a pool in its own supervision tree and gets the
  # mock LM's answer; then the same app as a release, moved away, with the app
  # and the repository copy deleted, run from a third directory, answers too,
  # its interpreter set by config/runtime.exs (the README's "Releases").
  #
  # Offline: the setup installs the worker alone (`--no-deps`); at run time
  # PYTHONPATH lends the repository venv's site-packages for its
  # dependencies, which does not bring in the repository's own (editable)
  # dspy_bridge, as the test checks. Everything builds in one Mix environment
  # (prod), so the client is compiled once.
  use ExUnit.Case, async: true

  import DSPyBridge.Test.Helpers

  alias DSPyBridge.Test.ConsumerApp

  @moduletag timeout: 240_000

  setup :tmp_dir_setup

  @question "What is DSPy?"
  @answer "A framework for programming language models."

  # Run by `mix run` and by the release's `eval` alike (eval starts no app).
  @script """
  {:ok, _} = Application.ensure_all_started(:consumer)
  children = for {id, _, _, _} <- Supervisor.which_children(Consumer.Supervisor), do: id
  {:ok, %{workers: [%{os_pid: os_pid}]}} = DSPyBridge.stats(Consumer.DSPy)
  [python | _] = String.split(File.read!("/proc/\#{os_pid}/cmdline"), <<0>>)
  IO.puts("children: \#{inspect(children)}")
  IO.puts("source: \#{DSPyBridge.Command.resolve([]).source}")
  IO.puts("worker: \#{python}")
  IO.puts("os_pid: \#{os_pid}")
  IO.puts("answer: \#{Consumer.ask(#{inspect(@question)})}")
  """

  test "a new app sets up the worker, answers under mix run and as a moved release",
       %{base: base} do
    {repo, client} = ConsumerApp.copy_repo!(base)
    ConsumerApp.cmd!("mix", ["new", "consumer", "--sup"], cd: base)
    app = Path.join(base, "consumer")
    write_app!(app, client)

    deploy = Path.join(base, "deploy")
    venv = Path.join(deploy, "venv")
    python = Path.join(venv, "bin/python")

    # the base interpreter is the repository venv's: the borrowed packages are built for it
    out =
      ConsumerApp.cmd!(
        "mix",
        ["dspy_bridge.setup", "--no-deps", "--venv", venv, "--python", ConsumerApp.python()],
        cd: app,
        env: [{"MIX_ENV", "prod"}, {"PYTHONPATH", ConsumerApp.setup_pythonpath!(base)}]
      )

    assert out =~ "Installed dspy-bridge "
    assert out =~ ~s(config :dspy_bridge, python: "#{python}")

    run_env = [
      {"PYTHONPATH", ConsumerApp.site_packages()},
      # the mock LM needs no network; keep litellm from reaching for it
      {"LITELLM_LOCAL_MODEL_COST_MAP", "True"},
      {"LITELLM_TELEMETRY", "False"},
      {"RELEASE_ROOT", nil}
    ]

    # what the worker imports with that path: the venv's own installed copy
    origin =
      ConsumerApp.cmd!(python, ["-P", "-c", "import dspy_bridge; print(dspy_bridge.__file__)"],
        env: run_env
      )

    assert String.starts_with?(origin, venv <> "/lib/"), origin

    # 1. under Mix, the interpreter from DSPY_BRIDGE_PYTHON
    out =
      ConsumerApp.cmd!("mix", ["run", "-e", @script],
        cd: app,
        env: [{"MIX_ENV", "prod"}, {"DSPY_BRIDGE_PYTHON", python} | run_env]
      )

    assert_answered(out, :env, python)

    # 2. as a release, moved beside the venv; nothing of the app or the repository is left
    ConsumerApp.cmd!("mix", ["release"], cd: app, env: [{"MIX_ENV", "prod"}])
    release = Path.join(deploy, "consumer")
    File.rename!(Path.join(app, "_build/prod/rel/consumer"), release)
    File.rm_rf!(app)
    File.rm_rf!(repo)
    elsewhere = Path.join(base, "elsewhere")
    File.mkdir_p!(elsewhere)

    out =
      ConsumerApp.cmd!(Path.join(release, "bin/consumer"), ["eval", @script],
        cd: elsewhere,
        env: [{"MIX_ENV", nil}, {"DSPY_BRIDGE_PYTHON", nil} | run_env]
      )

    assert_answered(out, :config, python)
  end

  defp assert_answered(out, source, python) do
    assert out =~ ~r/^children: \[Consumer\.DSPy\]$/m, out
    assert out =~ "\nsource: #{source}\n", out
    assert out =~ "\nworker: #{python}\n", out
    assert out =~ "\nanswer: #{@answer}\n", out
    # the VM's exit ends its worker: no Python process outlives the app
    [_, os_pid] = Regex.run(~r/^os_pid: (\d+)$/m, out)
    await_os_exit(String.to_integer(os_pid))
  end

  defp write_app!(app, client) do
    ConsumerApp.edit!(
      Path.join(app, "mix.exs"),
      "defp deps do\n    [\n",
      "defp deps do\n    [\n      {:dspy_bridge, path: #{inspect(client)}},\n"
    )

    ConsumerApp.edit!(
      Path.join(app, "lib/consumer/application.ex"),
      "children = [\n",
      """
      children = [
            {DSPyBridge.Pool,
             name: Consumer.DSPy,
             size: 1,
             default_lm: [model: "mock", extra: %{responses: %{#{inspect(@question)} => #{inspect(@answer)}}}]},
      """
    )

    File.write!(Path.join(app, "lib/consumer.ex"), """
    defmodule Consumer do
      def ask(question) do
        {:ok, %{"program_id" => id}} = DSPyBridge.create_program(Consumer.DSPy, "question -> answer")

        {:ok, %{"outputs" => %{"answer" => answer}}} =
          DSPyBridge.execute(Consumer.DSPy, id, %{question: question})

        answer
      end
    end
    """)

    # the README's recipe: in a release, the venv beside the release's directory
    File.mkdir_p!(Path.join(app, "config"))

    File.write!(Path.join(app, "config/runtime.exs"), """
    import Config

    if root = System.get_env("RELEASE_ROOT") do
      config :dspy_bridge, python: Path.expand("../venv/bin/python", root)
    end
    """)
  end
end
