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

  @timeout [
    type: :timeout,
    default: 30_000,
    doc:
      "how long the call may take; then it returns a `:timeout` error " <>
        "and the worker is told to cancel the work"
  ]

  @command [
    python: [
      type: :string,
      doc:
        "the Python interpreter (else `config :dspy_bridge, python:`, " <>
          "`DSPY_BRIDGE_PYTHON`, the repository's `.venv`, `python3`)"
    ],
    args: [
      type: :list,
      default: ["-P", "-m", "dspy_bridge"],
      doc: "the interpreter's arguments"
    ],
    extra_args: [
      type: :list,
      default: [],
      doc: ~s(appended to `:args`, e.g. `["--enable-test-commands"]`)
    ],
    env: [
      type: :env,
      default: [],
      doc: "environment variables as `{name, value}` pairs (`nil`/`false` unsets one)"
    ],
    cd: [type: :string, doc: "the working directory of the OS process"],
    log_level: [type: :log_level, doc: "the worker's stderr log level (`--log-level`)"]
  ]

  @worker_own [
    name: [type: :process_name, doc: "registers the process under this name"],
    ready_timeout: [
      type: :pos_integer,
      default: 15_000,
      doc: "ms to wait for the worker's `ready` and its replay, else it is killed"
    ],
    max_in_flight: [
      type: :pos_integer,
      default: 200,
      doc: "requests in flight at once; more wait in the queue"
    ],
    max_queue: [
      type: :non_neg_integer,
      default: 10_000,
      doc: "requests waiting beyond `:max_in_flight`; more get `:overloaded`"
    ],
    overflow: [
      type: {:in, [:queue, :error]},
      default: :queue,
      doc: "`:error`: a request beyond `:max_in_flight` gets `:overloaded` at once"
    ],
    worker_timeout_margin: [
      type: :non_neg_integer,
      default: 1_000,
      doc: "ms added to a request's timeout for the worker's own `timeout_ms`"
    ],
    shutdown_grace: [
      type: :non_neg_integer,
      default: 2_000,
      doc: "ms the worker may take to drain on stop"
    ],
    kill_after: [
      type: :non_neg_integer,
      default: 2_000,
      doc: "ms to wait beyond the grace for the OS process to exit before SIGKILL"
    ],
    init_commands: [
      type: :list,
      default: [],
      doc: "`[{command, args}]` sent after `ready`, before the replay"
    ],
    replay: [
      type: {:fun, 0},
      doc: "returns the batches of `{command, args}` to send before serving"
    ],
    on_event: [
      type: :event_sink,
      doc:
        "a function called with every `DSPyBridge.Event`, or a pid sent `{:dspy_bridge_event, event}`"
    ],
    pool: [
      type: :map,
      doc: "set by the pool: its name, the worker's index and its callbacks (see `Worker`)"
    ]
  ]

  @worker @command ++ @worker_own

  # the worker options a pool passes on to each of its workers
  @forwarded [
    :python,
    :args,
    :extra_args,
    :env,
    :cd,
    :log_level,
    :ready_timeout,
    :max_in_flight,
    :max_queue,
    :overflow,
    :worker_timeout_margin,
    :shutdown_grace,
    :kill_after
  ]

  @pool [
          name: [
            type: :atom,
            required: true,
            doc: "names the pool: its supervisor, ETS table and event registry"
          ],
          size: [
            type: :pos_integer,
            default: {:call, {System, :schedulers_online, []}},
            doc: "the number of workers"
          ],
          default_lm: [
            type: :lm,
            doc:
              "`configure_lm` arguments sent to every worker as its default LM " <>
                "(e.g. `[model: \"mock\"]`)"
          ],
          on_event: [
            type: {:fun, 1},
            doc:
              "called with every `DSPyBridge.Event`, in the worker process (keep it fast); " <>
                "processes can `DSPyBridge.subscribe/1`"
          ],
          await_ready: [
            type: :boolean,
            default: true,
            doc: "`start_link/1` returns once every worker is ready"
          ],
          max_restarts: [
            type: :non_neg_integer,
            default: 20,
            doc: "supervisor restart intensity: at most this many restarts..."
          ],
          max_seconds: [
            type: :pos_integer,
            default: 10,
            doc: "...in this many seconds, else the pool gives up"
          ]
        ] ++ Keyword.take(@worker, @forwarded)

  @call [
    session: [
      type: :session,
      doc:
        "the session id (an atom is taken as its name): its LM, programs and usage, " <>
          "on its own worker; without it, the shared default session"
    ],
    timeout: @timeout,
    worker: [type: :non_neg_integer, doc: "(advanced) the index of the worker to use"]
  ]

  @record [
    type: :any,
    doc: "set by the client: what to record for replay once the request succeeds"
  ]

  @listen [
    type: {:fun, 2},
    doc:
      "`request/4` only: called in the calling process, while it waits, with the name and " <>
        "map of each of the worker's events for this request (`progress`, `stream`, " <>
        "`stream_status`)"
  ]

  @lm_call [
    type: :lm,
    doc: "an LM for this call, overriding the program's and the session's"
  ]

  @call_functions ~w(configure_lm/3 create_program/3 register_tools/3 list_tools/2
                     delete_tool/3 get_program/3 list_programs/2 delete_program/3
                     export_program/3 checkpoint_program/3 get_usage/2 reset_usage/2
                     list_sessions/2 ping/2 request/4)

  # Per entry point: `where` names it in error messages, `heading` and
  # `intro` in the docs; `extends` takes another schema's options first.
  @schemas [
    pool: [
      where: "Pool.start_link/1",
      heading: "`Pool.start_link/1`, `child_spec/1`",
      intro:
        "The worker options from `:python` on are passed on to every worker " <>
          "(see `Worker`).",
      options: @pool
    ],
    worker: [
      where: "Worker.start_link/1",
      heading: "`Worker.start_link/1`, `start/1`",
      intro:
        "`:python` to `:log_level` make the command (see `Command`); " <>
          "`:init_commands`, `:replay` and `:pool` are set by a pool.",
      options: @worker
    ],
    worker_child_spec: [
      where: "Worker.child_spec/1",
      heading: "`Worker.child_spec/1`",
      extends: :worker,
      options: [
        # No default here: naming the Worker module would make this schema depend on it.
        id: [type: :any, doc: "the child's id in its supervisor (default `Worker`)"]
      ]
    ],
    command: [
      where: "Command.resolve/1",
      heading: "`Command.resolve/1`",
      options: @command
    ],
    request: [
      where: "Worker.request/4",
      heading: "`Worker.request/4`, `send_request/4`",
      options: [
        timeout: @timeout,
        record: @record,
        load: [type: :any, doc: "set by the pool: its load counter, `{atomics, index}`"],
        listen: @listen
      ]
    ],
    pool_request: [
      where: "Pool.request/5",
      heading: "`Pool.request/5`",
      options: [
        timeout: @timeout,
        worker: @call[:worker],
        record: @record,
        listen: @listen,
        resume: [
          type: :non_neg_integer,
          default: 0,
          doc:
            "how many times to send the request again when its worker dies with it in " <>
              "flight: on the restarted worker, after its replay (only for a request that " <>
              "may run twice, such as a checkpointed `compile_program`)"
        ]
      ]
    ],
    broadcast: [
      where: "Pool.broadcast/4",
      heading: "`Pool.broadcast/4`",
      options: [timeout: @timeout, record: @record]
    ],
    call: [
      where: "a DSPyBridge call",
      heading: "`DSPyBridge` calls",
      intro: "The options of " <> Enum.map_join(@call_functions, ", ", &"`#{&1}`") <> ":",
      options: @call
    ],
    execute: [
      where: "DSPyBridge.execute/4",
      heading: "`DSPyBridge.execute/4`",
      extends: :call,
      options: [
        lm: @lm_call,
        config: [type: :map_or_keyword, doc: "per-call settings, e.g. `%{temperature: 0.0}`"],
        stream: [
          type: :boolean,
          doc: "the worker streams the output fields as it writes them (see `:on_chunk`)"
        ],
        on_chunk: [
          type: {:fun, 1},
          doc:
            "streams (implies `stream: true`): called in the calling process with each " <>
              "`{:chunk, field, text}` and `{:status, message}` as it arrives, before the call returns"
        ]
      ]
    ],
    stream: [
      where: "DSPyBridge.stream/4",
      heading: "`DSPyBridge.stream/4`",
      extends: :call,
      options: [
        lm: @lm_call,
        config: [type: :map_or_keyword, doc: "per-call settings, e.g. `%{temperature: 0.0}`"]
      ]
    ],
    compile: [
      where: "DSPyBridge.compile/4",
      heading: "`DSPyBridge.compile/4`",
      options: [
        trainset: [
          type: :list,
          required: true,
          doc: "the examples the optimizer learns from (maps of input and expected values)"
        ],
        metric: [
          type: {:or, [:string, :atom, :map_or_keyword]},
          required: true,
          doc: "a metric as in `evaluate/5`: a name or a map with `:name` and its options"
        ],
        valset: [
          type: :list,
          doc: "examples scored before and after (`score_before`, `score_after`; else nil)"
        ],
        options: [type: :map_or_keyword, doc: "the optimizer's options, e.g. `%{k: 4}`"],
        target_program_id: [
          type: :string,
          doc:
            "store the compiled program beside the original under this id (else it replaces it)"
        ],
        checkpoint: [
          type: {:or, [:string, :map_or_keyword]},
          doc:
            "a checkpoint id (or `%{id: id}`): the run's LM answers are kept on disk by a " <>
              "worker started with `--checkpoint-dir`, so the same compile issued again replays them"
        ],
        lm: [type: :lm, doc: "an LM for the run, overriding the program's and the session's"],
        on_progress: [
          type: {:fun, 1},
          doc: "called in the calling process with each `progress` event's map as it arrives"
        ],
        resume: [
          type: {:or, [:boolean, :non_neg_integer]},
          default: false,
          doc:
            "with a `:checkpoint`: when the worker dies during the run, issue it again on the " <>
              "restarted worker, up to this many times (`true`: 3)"
        ],
        session: @call[:session],
        timeout: [
          type: :timeout,
          default: 600_000,
          doc:
            "how long the whole compile may take (resumes included); then it returns a " <>
              "`:timeout` error and the worker is told to cancel the run"
        ],
        worker: @call[:worker]
      ]
    ],
    evaluate: [
      where: "DSPyBridge.evaluate/5",
      heading: "`DSPyBridge.evaluate/5`",
      extends: :call,
      options: [
        lm: [
          type: :lm,
          doc: "an LM for every example, overriding the program's and the session's"
        ],
        on_progress: [
          type: {:fun, 1},
          doc: "called in the calling process with each `progress` event's map as it arrives"
        ],
        max_concurrency: [type: :pos_integer, doc: "examples run at once (worker default 8)"],
        example_timeout_ms: [
          type: :pos_integer,
          doc: "ms each example may take; a slower one fails with `timeout`"
        ],
        per_example: [type: :boolean, doc: "also return every example's score and outputs"]
      ]
    ],
    import_program: [
      where: "DSPyBridge.import_program/3",
      heading: "`DSPyBridge.import_program/3`",
      extends: :call,
      options: [
        program_id: [
          type: :string,
          doc: "names the new program (else the document's id, or one the client picks)"
        ]
      ]
    ],
    end_session: [
      where: "DSPyBridge.end_session/3",
      heading: "`DSPyBridge.end_session/3`",
      intro: "The session is the second argument.",
      options: [timeout: @timeout, worker: @call[:worker]]
    ],
    configure_cache: [
      where: "DSPyBridge.configure_cache/3",
      heading: "`DSPyBridge.configure_cache/3`",
      intro: "The cache is configured on every worker, for every session.",
      options: [timeout: @timeout]
    ],
    stats: [
      where: "DSPyBridge.stats/2",
      heading: "`DSPyBridge.stats/2`",
      options: [
        worker_stats: [
          type: :boolean,
          default: true,
          doc: "fetch each worker's own `get_stats` answer (else `worker_stats: nil`)"
        ],
        timeout: [type: :non_neg_integer, default: 5_000, doc: "ms for each worker's `get_stats`"]
      ]
    ]
  ]

  # The README's "Options" section: these schemas, in this order.
  @readme [
    :pool,
    :worker,
    :worker_child_spec,
    :call,
    :execute,
    :stream,
    :evaluate,
    :compile,
    :import_program,
    :end_session,
    :configure_cache,
    :stats,
    :request,
    :pool_request,
    :broadcast
  ]

  @log_levels ~w(debug info warning error critical)

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
