defmodule DSPyBridge.Options do
  @moduledoc """
  The options of every public entry point that takes a keyword list, in one
  schema: per entry point, each option's name, type, default and one-line
  doc, written once here.

  Entry points validate their options with `validate!/2`: an unknown option
  (`sise:`, `pyhton:`, `default_llm:`, `timout:`) raises `ArgumentError`
  naming it and listing the known ones, and a value of the wrong type raises
  `ArgumentError` naming the option. Defaults are filled in from the schema.
  Options without a default may be given as `nil`, which means "not given".

  The option tables in the docs of `DSPyBridge` and of its `Pool` and
  `Worker` modules, and the README's "Options" section, are generated
  from this schema (`table/1`, `markdown/0`); a test checks that the README
  matches.
  """

  alias DSPyBridge.Options.Schema

  @schemas Schema.schemas()
  @readme Schema.readme()
  @forwarded Schema.forwarded()
  @log_levels Schema.log_levels()

  @typedoc "The name of a schema (an entry point)."
  @type schema ::
          :pool
          | :worker
          | :worker_child_spec
          | :command
          | :request
          | :pool_request
          | :broadcast
          | :call
          | :execute
          | :stream
          | :evaluate
          | :compile
          | :import_program
          | :end_session
          | :configure_cache
          | :stats

  # -- compiled forms ------------------------------------------------------------

  compiled =
    Enum.reduce(@schemas, %{}, fn {name, s}, acc ->
      own = Keyword.fetch!(s, :options)
      all = if parent = s[:extends], do: acc[parent].all ++ own, else: own

      checks =
        for {key, o} <- all do
          default =
            case Keyword.fetch(o, :default) do
              {:ok, {:call, mfa}} -> {:call, mfa}
              {:ok, value} -> {:value, value}
              :error -> nil
            end

          {key, Keyword.fetch!(o, :type), default, Keyword.get(o, :required, false)}
        end

      fill =
        for {key, _, default, required?} <- checks,
            default != nil or required?,
            do: {key, if(required?, do: :required, else: default)}

      # The schema names the client's modules relative to `DSPyBridge` (`Pool.…`), so
      # this module, which they all call, mentions none of them; messages and docs
      # show the full names.
      qualify = &Regex.replace(~r/(^|`)(Pool|Worker|Command)\./, &1, "\\1DSPyBridge.\\2.")

      Map.put(acc, name, %{
        where: qualify.(Keyword.fetch!(s, :where)),
        heading: qualify.(Keyword.fetch!(s, :heading)),
        intro: s[:intro],
        extends: s[:extends],
        own: own,
        all: all,
        fill: fill,
        checks: checks
      })
    end)

  for {name, c} <- compiled do
    defp compiled(unquote(name)), do: unquote(Macro.escape(c))
  end

  defp compiled(other), do: raise(ArgumentError, "no option schema #{inspect(other)}")

  # option(schema, key): {type, nil_ok?} (nil means "not given" for an
  # option without a default), or :unknown
  for {name, c} <- compiled, {key, type, default, required?} <- c.checks do
    nil_ok? = default == nil and not required?
    defp option(unquote(name), unquote(key)), do: {unquote(Macro.escape(type)), unquote(nil_ok?)}
  end

  defp option(_schema, _key), do: :unknown

  # -- validation ------------------------------------------------------------------

  @doc """
  Validates `opts` against `schema` and returns them with the defaults
  filled in.

  Raises `ArgumentError` for an unknown option (naming it and listing the
  known ones), a missing required option, or a value of the wrong type
  (naming the option).

      iex> DSPyBridge.Options.validate!([timeout: 5], :configure_cache)
      [timeout: 5]

      iex> DSPyBridge.Options.validate!([timout: 5], :configure_cache)
      ** (ArgumentError) unknown option :timout for DSPyBridge.configure_cache/3 (did you mean :timeout?); the known options are: :timeout
  """
  @spec validate!(keyword(), schema()) :: keyword()
  def validate!(opts, schema) when is_list(opts) do
    c = compiled(schema)

    case scan(opts, schema, c.where, []) do
      [] -> fill(opts, c.fill, c.where)
      :not_keyword -> raise ArgumentError, not_keyword(opts, c)
      unknown -> raise ArgumentError, unknown_message(Enum.reverse(unknown), c)
    end
  end

  def validate!(opts, schema), do: raise(ArgumentError, not_keyword(opts, compiled(schema)))

  # One pass over the options: each is known and of its type (or `nil` for
  # an option without a default); the unknown ones are collected. A key
  # given twice is checked twice; as with Keyword.get/2 the first one wins.
  defp scan([], _schema, _where, unknown), do: unknown

  defp scan([{key, value} | rest], schema, where, unknown) when is_atom(key) do
    case option(schema, key) do
      :unknown ->
        scan(rest, schema, where, [key | unknown])

      {_type, true} when value == nil ->
        scan(rest, schema, where, unknown)

      {type, _nil_ok?} ->
        unless valid?(type, value), do: raise(ArgumentError, type_error(key, type, value, where))
        scan(rest, schema, where, unknown)
    end
  end

  defp scan(_not_keyword, _schema, _where, _unknown), do: :not_keyword

  # The options not given that have a default (or are required).
  defp fill(opts, [], _where), do: opts

  defp fill(opts, [{key, how} | rest], where) do
    if :lists.keymember(key, 1, opts) do
      fill(opts, rest, where)
    else
      case how do
        {:value, value} -> fill([{key, value} | opts], rest, where)
        {:call, {m, f, a}} -> fill([{key, apply(m, f, a)} | opts], rest, where)
        :required -> raise ArgumentError, "#{where}: required option #{inspect(key)} not given"
      end
    end
  end

  defp not_keyword(opts, c),
    do: "#{c.where} expects a keyword list of options, got: #{inspect(opts)}"

  defp type_error(key, type, value, where) do
    "invalid value for option #{inspect(key)} of #{where}: expected " <>
      "#{strip(label(type))}, got: #{inspect(value, limit: 10, printable_limit: 60)}"
  end

  defp unknown_message(unknown, c) do
    known = Enum.map(c.checks, &elem(&1, 0))
    unknown = Enum.uniq(unknown)

    hints =
      for key <- unknown,
          guess = suggest(key, known),
          do: "#{inspect(key)}: did you mean #{inspect(guess)}?"

    hint =
      case {unknown, hints} do
        {_, []} -> ""
        {[_], [one]} -> " (" <> (one |> String.split(": ", parts: 2) |> List.last()) <> ")"
        _ -> " (" <> Enum.join(hints, " ") <> ")"
      end

    noun = if match?([_], unknown), do: "option", else: "options"

    "unknown #{noun} #{Enum.map_join(unknown, ", ", &inspect/1)} for #{c.where}#{hint}; " <>
      "the known options are: #{Enum.map_join(known, ", ", &inspect/1)}"
  end

  defp suggest(key, known) when is_atom(key) do
    name = Atom.to_string(key)

    {best, score} =
      known
      |> Enum.map(&{&1, String.jaro_distance(name, Atom.to_string(&1))})
      |> Enum.max_by(&elem(&1, 1), fn -> {nil, 0.0} end)

    if score >= 0.8, do: best
  end

  defp suggest(_key, _known), do: nil

  defp valid?(:atom, v), do: is_atom(v) and v != nil
  defp valid?(:pos_integer, v), do: is_integer(v) and v > 0
  defp valid?(:non_neg_integer, v), do: is_integer(v) and v >= 0
  defp valid?(:timeout, v), do: v == :infinity or (is_integer(v) and v >= 0)
  defp valid?(:boolean, v), do: is_boolean(v)
  defp valid?(:string, v), do: is_binary(v)
  defp valid?(:list, v), do: is_list(v)
  defp valid?(:env, v), do: (is_list(v) or is_map(v)) and Enum.all?(v, &match?({_, _}, &1))
  defp valid?(:log_level, v), do: (is_binary(v) or is_atom(v)) and to_string(v) in @log_levels
  defp valid?({:in, values}, v), do: v in values
  defp valid?({:fun, arity}, v), do: is_function(v, arity)
  defp valid?(:event_sink, v), do: is_function(v, 1) or is_pid(v)
  defp valid?(:map, v), do: is_map(v)
  defp valid?(:lm, v), do: is_binary(v) or is_list(v) or is_map(v)
  defp valid?(:map_or_keyword, v), do: is_map(v) or is_list(v)
  defp valid?(:session, v), do: is_binary(v) or is_atom(v)
  defp valid?(:any, _v), do: true
  defp valid?({:or, types}, v), do: Enum.any?(types, &valid?(&1, v))

  defp valid?(:process_name, v) do
    (is_atom(v) and v != nil) or match?({:global, _}, v) or
      match?({:via, m, _} when is_atom(m), v)
  end

  # -- reading the schema ----------------------------------------------------------

  @doc "The worker options a pool passes on to each of its workers."
  @spec forwarded() :: [atom()]
  def forwarded, do: @forwarded

  @doc "The option names of `schema`, in the documented order."
  @spec keys(schema()) :: [atom()]
  def keys(schema), do: Enum.map(compiled(schema).checks, &elem(&1, 0))

  @doc """
  The default of option `key` in `schema` (`nil` if it has none; a
  computed default such as the pool's `:size` is computed now).

      iex> DSPyBridge.Options.default(:worker, :max_in_flight)
      200
  """
  @spec default(schema(), atom()) :: term()
  def default(schema, key) do
    case List.keyfind(compiled(schema).checks, key, 0) do
      {_, _, {:value, value}, _} -> value
      {_, _, {:call, {m, f, a}}, _} -> apply(m, f, a)
      {_, _, nil, _} -> nil
      nil -> raise ArgumentError, "no option #{inspect(key)} in #{inspect(schema)}"
    end
  end

  # -- documentation -----------------------------------------------------------------

  @doc """
  The markdown table of `schema`'s options: name, type, default and
  description (for a schema that extends another, only its own options).
  """
  @spec table(schema()) :: String.t()
  def table(schema) do
    rows =
      for {key, o} <- compiled(schema).own do
        cells = [
          "`#{inspect(key)}`",
          label(Keyword.fetch!(o, :type)),
          default_cell(o),
          Keyword.fetch!(o, :doc)
        ]

        "| " <> Enum.map_join(cells, " | ", &String.replace(&1, "|", "\\|")) <> " |"
      end

    Enum.join(
      ["| Option | Type | Default | Description |", "| --- | --- | --- | --- |" | rows],
      "\n"
    ) <>
      "\n"
  end

  @doc """
  The documentation of `schemas` (default: all of the public entry points,
  as in the README's "Options" section): per entry point a heading at
  `level` (`"###"`), its introduction and its table.
  """
  @spec markdown([schema()], String.t()) :: String.t()
  def markdown(schemas \\ @readme, level \\ "###") do
    Enum.map_join(schemas, "\n", fn schema ->
      c = compiled(schema)

      intro =
        [c.extends && "The options of #{compiled(c.extends).heading}, and:", c.intro]
        |> Enum.reject(&is_nil/1)
        |> Enum.map_join("", &"#{&1}\n\n")

      "#{level} #{c.heading}\n\n" <> intro <> table(schema)
    end)
  end

  defp default_cell(o) do
    cond do
      o[:required] -> "required"
      not Keyword.has_key?(o, :default) -> "—"
      true -> format_default(o[:default])
    end
  end

  defp format_default({:call, {m, f, a}}),
    do: "`#{inspect(m)}.#{f}(#{Enum.map_join(a, ", ", &inspect/1)})`"

  defp format_default(n) when is_integer(n), do: "`#{group(n)}`"
  defp format_default(value), do: "`#{inspect(value)}`"

  defp group(n) when n < 1_000, do: Integer.to_string(n)

  defp group(n) do
    n
    |> Integer.to_string()
    |> String.reverse()
    |> String.graphemes()
    |> Enum.chunk_every(3)
    |> Enum.map_join("_", &Enum.join/1)
    |> String.reverse()
  end

  defp label(:atom), do: "atom"
  defp label(:pos_integer), do: "positive integer"
  defp label(:non_neg_integer), do: "non-negative integer"
  defp label(:timeout), do: "ms or `:infinity`"
  defp label(:boolean), do: "boolean"
  defp label(:string), do: "string"
  defp label(:list), do: "list"
  defp label(:env), do: "`[{name, value}]` or map"
  defp label(:log_level), do: Enum.map_join(@log_levels, ", ", &"`#{inspect(&1)}`")
  defp label({:in, values}), do: Enum.map_join(values, " or ", &"`#{inspect(&1)}`")
  defp label({:fun, arity}), do: "function of arity #{arity}"
  defp label(:event_sink), do: "function of arity 1, or pid"
  defp label(:process_name), do: "atom or `{:global, _}`, `{:via, _, _}`"
  defp label(:map), do: "map"
  defp label(:lm), do: "model string, keyword list or map"
  defp label(:map_or_keyword), do: "map or keyword list"
  defp label(:session), do: "string or atom"
  defp label(:any), do: "any"
  defp label({:or, types}), do: Enum.map_join(types, " or ", &label/1)

  defp strip(label), do: String.replace(label, "`", "")
end
