defmodule DSPyBridge.MixProject do
  use Mix.Project

  def project do
    [
      app: :dspy_bridge,
      version: "0.1.0",
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      elixirc_paths: elixirc_paths(Mix.env()),
      # Strict where the code is checked (tests, CI); lenient for `mix run`
      # so a newer Elixir's new warnings cannot break the demo.
      elixirc_options: [warnings_as_errors: Mix.env() == :test],
      # No hex dependencies: hex is unreachable where this is built and tested. `mix docs`
      # needs ex_doc, which a project that can reach hex adds as a dev dependency.
      # `:telemetry` would be `{:telemetry, "~> 1.0", optional: true}`; without it the
      # client emits its events only when the host application has it loaded (see
      # DSPyBridge.Telemetry), and the tests use test/support/fake_telemetry.ex.
      deps: [],
      description:
        "Run DSPy programs from Elixir: a supervised pool of Python workers " <>
          "spoken to over Erlang ports.",
      package: [
        licenses: ["MIT"],
        links: %{},
        files: ~w(lib mix.exs README.md)
      ],
      docs: [main: "DSPyBridge", extras: ["README.md"]]
    ]
  end

  def application do
    # the application only starts the :pg scope of clustered pools (docs/cluster.md)
    [extra_applications: [:logger], mod: {DSPyBridge.Application, []}]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]
end
