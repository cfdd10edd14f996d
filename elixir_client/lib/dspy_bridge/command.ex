defmodule DSPyBridge.Command do
  @moduledoc """
  Works out how to start a worker OS process.

  Precedence for the Python interpreter:

    1. the `:python` option given to the pool or worker;
    2. `config :dspy_bridge, python: "/path/to/python"`;
    3. the `DSPY_BRIDGE_PYTHON` environment variable;
    4. the virtualenv `mix dspy_bridge.setup` creates by default,
       `_build/dspy_bridge/venv/bin/python` of the application (found from
       this application's directory, `<root>/_build/<env>/lib/dspy_bridge`);
    5. this repository's virtualenv, `../.venv/bin/python` relative to the
       Mix project (so the client works in the repository with no set-up
       beyond `make`);
    6. `python3` on the `PATH`.

  The default arguments are `#{inspect(DSPyBridge.Options.default(:command, :args))}`; `:extra_args` are
  appended (e.g. `["--enable-test-commands"]`). `-P` keeps the working
  directory off Python's module path, so a stray `protocol.py` (or `dspy.py`)
  there cannot shadow the worker's modules.
  """

  @repo_root Path.expand("../../..", __DIR__)

  @typedoc """
  A resolved command: executable, arguments, environment and directory, and
  `source`, the setting that chose the interpreter (`:option`, `:config`,
  `:env`, `:setup`, `:venv` or `:path`).
  """
  @type t :: %{
          python: String.t(),
          source: :option | :config | :env | :setup | :venv | :path,
          args: [String.t()],
          env: [{charlist(), charlist() | false}],
          cd: String.t() | nil,
          stderr: :logger | :passthrough
        }

  @doc "The repository root this client was compiled in (the parent of `elixir_client/`)."
  @spec repo_root() :: String.t()
  def repo_root, do: @repo_root

  @doc """
  Resolves the worker command from options (`:python`, `:args`,
  `:extra_args`, `:env`, `:cd`, `:log_level`, `:stderr`, `:transcript`: the
  worker options of that name, and the index in `:pool`, for the transcript's path;
  other options are ignored, those are validated).
  """
  @spec resolve(keyword()) :: t()
  def resolve(opts) do
    index = (opts[:pool] || %{})[:index]

    opts =
      opts
      |> Keyword.take(DSPyBridge.Options.keys(:command))
      |> DSPyBridge.Options.validate!(:command)

    venv_python = Path.join(@repo_root, ".venv/bin/python")

    {source, python} =
      cond do
        opts[:python] -> {:option, opts[:python]}
        python = Application.get_env(:dspy_bridge, :python) -> {:config, python}
        python = System.get_env("DSPY_BRIDGE_PYTHON") -> {:env, python}
        python = setup_python() -> {:setup, python}
        File.exists?(venv_python) -> {:venv, venv_python}
        true -> {:path, System.find_executable("python3") || "python3"}
      end

    python = System.find_executable(python) || python

    log_args =
      case opts[:log_level] do
        nil -> []
        level -> ["--log-level", to_string(level)]
      end

    record_args =
      case opts[:transcript] do
        nil -> []
        path -> ["--record", transcript_path(path, index)]
      end

    %{
      python: python,
      source: source,
      args: Enum.map(opts[:args] ++ log_args ++ record_args ++ opts[:extra_args], &to_string/1),
      env: Enum.map(opts[:env], &env_pair/1),
      cd: opts[:cd],
      stderr: opts[:stderr]
    }
  end

  @doc """
  The interpreter of the virtualenv `mix dspy_bridge.setup` creates by
  default (`_build/dspy_bridge/venv/bin/python`, next to the build directory
  this application was loaded from), or `nil` when there is none.
  """
  @spec setup_python() :: String.t() | nil
  def setup_python do
    case :code.lib_dir(:dspy_bridge) do
      dir when is_list(dir) ->
        python = Path.expand("../../../dspy_bridge/venv/bin/python", to_string(dir))
        if File.exists?(python), do: python

      _ ->
        nil
    end
  end

  @doc """
  The transcript file of worker `index` (nil for a worker outside a pool):
  `template` with `{worker}` replaced by the index (by `0` outside a pool).
  """
  @spec transcript_path(String.t(), non_neg_integer() | nil) :: String.t()
  def transcript_path(template, index),
    do: String.replace(template, "{worker}", Integer.to_string(index || 0))

  defp env_pair({k, nil}), do: {to_charlist(k), false}
  defp env_pair({k, false}), do: {to_charlist(k), false}
  defp env_pair({k, v}), do: {to_charlist(k), to_charlist(v)}
end
