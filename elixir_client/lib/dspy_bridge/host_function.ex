defmodule DSPyBridge.HostFunction do
  @moduledoc false
  # Host functions (protocol: "Host functions and callbacks"), without I/O:
  #
  #   * a tool spec as given to `DSPyBridge.register_tools/3` split into its
  #     wire declaration (`name`, `description`, `parameters`) and its
  #     implementation (`run`);
  #   * an implementation called on a callback's `args`, everything it can do
  #     (return, raise, throw, exit) turned into an outcome;
  #   * that outcome as the encoded args of the `callback_reply` answering the
  #     callback: `result`, or `error` `{message, type?, retryable?}` held to
  #     the protocol's lengths.
  #
  # The call runs in a task under the pool's Task.Supervisor (the
  # worker's host-call manager), never in the worker process: `answer/4` is
  # that task's whole body, so the encoding happens there too.

  require Logger

  alias DSPyBridge.{Args, Protocol}

  # the protocol's bounds on a callback_reply's error
  @max_message 8_192
  @max_type 100

  @spec_keys ~w(name description parameters run)

  @typedoc """
  A host function's implementation: a function of the callback's `args`
  (a map, string keys, as decoded), or of `args` and a context map, or
  `{module, function, extra_args}`, called as `apply(module, function,
  [args | extra_args])`.
  """
  @type run :: (map() -> term()) | (map(), map() -> term()) | {module(), atom(), list()}

  @typedoc "What came of a call: the outcome `DSPyBridge.Telemetry` reports."
  @type outcome :: :ok | :error | :exception | :unencodable

  @doc """
  Splits a tool spec (a map or keyword list with `:name`, `:run` and
  optionally `:description`, `:parameters`; atom or string keys) into its
  wire declaration (string keys) and its implementation. Raises
  `ArgumentError` naming what is wrong.
  """
  @spec split!(term()) :: {map(), run()}
  def split!(spec) do
    spec = to_map!(spec)

    case Map.keys(spec) -- @spec_keys do
      [] -> :ok
      unknown -> raise ArgumentError, "unknown key(s) #{inspect(unknown)} in tool #{show(spec)}"
    end

    name =
      case spec["name"] do
        n when is_binary(n) and n != "" -> n
        n when is_atom(n) and n not in [nil, true, false] -> Atom.to_string(n)
        other -> raise ArgumentError, "a tool's :name must be a string, got: #{inspect(other)}"
      end

    run = spec["run"]

    unless run?(run) do
      raise ArgumentError,
            "tool #{inspect(name)}: :run must be a function of arity 1 or 2, or " <>
              "{module, function, extra_args}, got: #{inspect(run)}"
    end

    declaration =
      %{"name" => name}
      |> put_new("description", spec["description"])
      |> put_new("parameters", spec["parameters"] && Args.normalize(spec["parameters"]))

    {declaration, run}
  end

  @doc "Whether `term` is a tool spec with an implementation (a map or keyword list with `:run`)."
  @spec spec?(term()) :: boolean()
  def spec?(%{} = map) when not is_struct(map),
    do: is_map_key(map, :run) or is_map_key(map, "run")

  def spec?([{_, _} | _] = list), do: Keyword.keyword?(list) and Keyword.has_key?(list, :run)
  def spec?(_), do: false

  @doc "Whether `run` is an implementation `call/3` can call."
  @spec run?(term()) :: boolean()
  def run?(run) when is_function(run, 1) or is_function(run, 2), do: true

  def run?({m, f, extra}) when is_atom(m) and is_atom(f) and is_list(extra), do: true
  def run?(_), do: false

  @doc """
  Calls `run` on `args` (`ctx` is the context map a 2-arity function
  receives) and interprets what it returns: `{:ok, value}` or any value that
  is not an error tuple is the result; `{:error, reason}` is an error
  answer; a raise, throw or exit is an error answer too. Never raises.
  """
  @spec call(run(), map(), map()) :: {:ok, term()} | {:error | :exception, map()}
  def call(run, args, ctx) do
    run |> invoke(args, ctx) |> interpret()
  catch
    kind, reason ->
      stacktrace = __STACKTRACE__

      Logger.warning(
        "dspy_bridge host function #{inspect(ctx[:function])} (#{ctx[:purpose]}) failed: " <>
          Exception.format(kind, reason, stacktrace)
      )

      {:exception, failure(kind, reason)}
  end

  defp invoke(fun, args, _ctx) when is_function(fun, 1), do: fun.(args)
  defp invoke(fun, args, ctx) when is_function(fun, 2), do: fun.(args, ctx)
  defp invoke({m, f, extra}, args, _ctx), do: apply(m, f, [args | extra])

  defp interpret({:ok, value}), do: {:ok, value}
  defp interpret({:error, reason}), do: {:error, error_map(reason)}
  defp interpret(value), do: {:ok, value}

  @doc """
  The whole body of a callback's task: calls `run` (see `call/3`) and
  encodes the answer to callback `callback_id`. Returns `{outcome,
  {args_bin, shape}}`; a result that cannot be encoded as msgpack becomes
  an error answer (`:unencodable`).
  """
  @spec answer(String.t(), run(), map(), map()) :: {outcome(), {binary(), Protocol.shape()}}
  def answer(callback_id, run, args, ctx) do
    case call(run, args, ctx) do
      {:ok, value} ->
        case Protocol.encode_args(%{
               "callback_id" => callback_id,
               "result" => Args.normalize(value)
             }) do
          {:ok, encoded} ->
            {:ok, encoded}

          {:error, _} ->
            message =
              "returned a value that cannot be sent as msgpack: " <>
                inspect(value, limit: 10, printable_limit: 200)

            {:unencodable, error_reply(callback_id, message, "unencodable_result", false)}
        end

      {kind, error} ->
        {kind, encode!(%{"callback_id" => callback_id, "error" => error})}
    end
  end

  @doc "The encoded args of a `callback_reply` answering `callback_id` with an error."
  @spec error_reply(String.t(), String.t(), String.t() | nil, boolean()) ::
          {binary(), Protocol.shape()}
  def error_reply(callback_id, message, type \\ nil, retryable \\ false) do
    error =
      %{"message" => clip(message, @max_message), "retryable" => retryable}
      |> put_new("type", type && clip(type, @max_type))

    encode!(%{"callback_id" => callback_id, "error" => error})
  end

  @doc """
  The `error` of a callback_reply for what a function returned as
  `{:error, reason}`: a string is the message; a map or keyword list may
  give `:message`, `:type` and `:retryable`; an exception its message;
  anything else is inspected.
  """
  @spec error_map(term()) :: map()
  def error_map(reason) when is_binary(reason), do: error(reason, nil, false)

  def error_map(%{__exception__: true} = e),
    do: error(Exception.message(e), inspect(e.__struct__), false)

  def error_map(reason) when is_atom(reason) and reason not in [nil, true, false],
    do: error(Atom.to_string(reason), nil, false)

  def error_map([{k, _} | _] = reason) when is_atom(k) do
    if Keyword.keyword?(reason), do: error_map(Map.new(reason)), else: inspected(reason)
  end

  def error_map(%{} = reason) when not is_struct(reason) do
    field = fn name -> Map.get(reason, name, Map.get(reason, Atom.to_string(name))) end

    case field.(:message) do
      nil ->
        inspected(reason)

      message ->
        error(text(message), field.(:type) && text(field.(:type)), field.(:retryable) == true)
    end
  end

  def error_map(reason), do: inspected(reason)

  defp inspected(reason), do: error(inspect(reason, limit: 20, printable_limit: 500), nil, false)

  # a raise, throw or exit out of a host function
  defp failure(:error, reason) do
    e = Exception.normalize(:error, reason)
    error("#{inspect(e.__struct__)}: #{Exception.message(e)}", "exception", false)
  end

  defp failure(:throw, value), do: error("threw #{inspect(value, limit: 20)}", "throw", false)

  defp failure(:exit, reason),
    do: error("exited: #{Exception.format_exit(reason)}", "exit", false)

  defp error(message, type, retryable) do
    %{"message" => clip(message, @max_message), "retryable" => retryable}
    |> put_new("type", type && clip(type, @max_type))
  end

  @doc "`text` cut to at most `max` code points (the protocol counts characters)."
  @spec clip(String.t(), pos_integer()) :: String.t()
  def clip(text, max) do
    # a short text is left alone; a long one is cut at a code point boundary
    if byte_size(text) <= max do
      text
    else
      text |> String.codepoints() |> Enum.take(max) |> Enum.join()
    end
  end

  defp text(s) when is_binary(s), do: s
  defp text(a) when is_atom(a), do: Atom.to_string(a)
  defp text(other), do: inspect(other, limit: 20)

  defp encode!(args) do
    {:ok, encoded} = Protocol.encode_args(args)
    encoded
  end

  defp to_map!(%{} = map) when not is_struct(map), do: Map.new(map, fn {k, v} -> {key(k), v} end)

  defp to_map!(list) when is_list(list) do
    if Keyword.keyword?(list),
      do: to_map!(Map.new(list)),
      else: raise(ArgumentError, "a tool is a map or keyword list, got: #{inspect(list)}")
  end

  defp to_map!(other),
    do: raise(ArgumentError, "a tool is a map or keyword list, got: #{inspect(other)}")

  defp key(k) when is_atom(k), do: Atom.to_string(k)
  defp key(k), do: k

  defp show(spec), do: inspect(spec["name"] || Map.delete(spec, "run"))

  defp put_new(map, _key, nil), do: map
  defp put_new(map, key, value), do: Map.put(map, key, value)
end
