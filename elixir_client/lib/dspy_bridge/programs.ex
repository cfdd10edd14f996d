defmodule DSPyBridge.Programs do
  @moduledoc false
  # The LM and program functions of `DSPyBridge`, which delegates to them.
  alias DSPyBridge.{Args, HostFunction, Options, Tools}
  import DSPyBridge.Calls
  import DSPyBridge.Args, only: [lm_args: 1, normalize: 1]

  use DSPyBridge.ApiDocs

  @api_doc {:configure_lm,
            """
            Configures the LM of a session (with `session:`) or the default LM of
            every worker (without). Makes no LM call. The configuration is recorded
            and replayed into a restarted worker.

            The built-in mock LM takes its options in `:extra`:

                DSPyBridge.configure_lm(pool, [model: "mock/a", extra: %{default: "A"}], session: "s1")

            A mock LM can ask the host for its answers: `extra: %{generator: name}`
            names a host function of the session (see `register_tools/3`), which is
            called with `%{"model" => ..., "inputs" => ..., "outputs" => [field names],
            "instructions" => ..., "demos" => n}` (the prompt's instructions and how
            many demos it holds: what an optimizer changes, see `compile/4`) and
            returns the answer (a map of output fields, or one value). The
            generator may also be given inline, as a tool spec with `:name` and
            `:run`: it is registered first.

                DSPyBridge.configure_lm(pool,
                  [model: "mock", extra: %{generator: %{name: "gen", run: fn %{"inputs" => i} -> %{answer: i["question"]} end}}],
                  session: "s1")

            Returns the worker's answer (string keys), with any key redacted.
            """}
  def configure_lm(pool, lm, opts \\ []) do
    opts = Options.validate!(opts, :call)
    {args, inline} = inline_lm(lm_args(lm))

    with {:ok, _} <- register_inline(pool, inline, opts) do
      mutate(pool, "configure_lm", args, opts, fn session, args ->
        {:put_lm, session, args}
      end)
    end
  end

  @api_doc {:create_program,
            """
            Creates a program. `spec` is a signature string (`"question -> answer"`)
            or a keyword list / map with `:signature` and optionally `:program_id`,
            `:program_type`, `:options`, `:lm`, `:demos`, `:instructions`.

            `:program_type` (a string or atom) is `predict` (the default),
            `chain_of_thought`, `react`, `best_of_n` or `refine`; `:options` holds the
            type's own settings (see the protocol's "Program types"):

              * `react`: `tools:` 1–32 host functions of the session (see
                `register_tools/3`), `max_iters:` (default 20). A ReAct run calls its
                tools through the host: their Elixir functions run in this VM.
              * `best_of_n`, `refine`: `module:` (`predict` or `chain_of_thought`),
                `n:` attempts (default 3), `threshold:` (default 1.0), `reward:` —
                `%{metric: "exact_match" | "contains" | "f1", field: ..., expected:
                ...}` or `%{function: name}`, a host function that scores an attempt
                (called with `%{"inputs" => ..., "outputs" => ...}`, returning a
                number), `fail_count:`.

            Where a host function's name is expected (each of `options.tools`,
            `options.reward.function`, a mock `lm`'s `extra.generator`), a tool spec
            with `:run` may be given instead (see `t:tool/0`): it is registered in the
            session first (`register_tools/3`), and the program names it.

                DSPyBridge.create_program(pool,
                  %{program_id: "agent", signature: "question -> answer", program_type: :react,
                    options: %{tools: [%{name: "lookup_order", description: "Finds an order by id",
                                         parameters: %{type: "object",
                                                       properties: %{order_id: %{type: "string"}},
                                                       required: ["order_id"]},
                                         run: &MyApp.Orders.lookup/1}],
                               max_iters: 5}},
                  session: "acme")

            Returns `%{"program_id" => ..., "session_id" => ..., "program_type" => ...,
            "signature" => ...}`. Without `session:` the program is created on every
            worker (the client then picks the program id if `spec` has none).
            """}
  def create_program(pool, spec, opts \\ []) do
    opts = Options.validate!(opts, :call)

    args =
      case spec do
        s when is_binary(s) -> %{"signature" => s}
        other -> normalize(other)
      end

    args = Args.lm_config_as_lm(args)
    args = if is_map_key(args, "lm"), do: Map.update!(args, "lm", &lm_args/1), else: args
    {args, inline} = inline_program(args)

    args =
      if session(opts) == nil and not is_map_key(args, "program_id"),
        do: Map.put(args, "program_id", generate_id("prog")),
        else: args

    with {:ok, _} <- register_inline(pool, inline, opts) do
      mutate(pool, "create_program", args, opts, fn session, args ->
        {:put_program, session, "create_program", args}
      end)
    end
  end

  @api_doc {:get_program, "Describes a program (string keys)."}
  def get_program(pool, program_id, opts \\ []),
    do: read(pool, "get_program", %{"program_id" => program_id}, Options.validate!(opts, :call))

  @api_doc {:list_programs,
            "Lists the programs of a session (string keys, as the worker answers)."}
  def list_programs(pool, opts \\ []),
    do: read(pool, "list_programs", %{}, Options.validate!(opts, :call))

  @api_doc {:delete_program,
            "Deletes a program; it is no longer replayed after a worker restart."}
  def delete_program(pool, program_id, opts \\ []) do
    opts = Options.validate!(opts, :call)

    mutate(pool, "delete_program", %{"program_id" => program_id}, opts, fn session, _ ->
      {:delete_program, session, program_id}
    end)
  end

  @api_doc {:export_program,
            """
            Exports a program: `{:ok, %{"document" => doc}}`, a msgpack-safe
            document (string keys) that `import_program/3` recreates in any session of
            any worker. Secrets (API keys given by value) are not exported.
            """}
  def export_program(pool, program_id, opts \\ []) do
    opts = Options.validate!(opts, :call)
    read(pool, "export_program", %{"program_id" => program_id}, opts)
  end

  @api_doc {:checkpoint_program,
            """
            Checkpoints a program for replay: exports its current state and records
            it, so a restarted worker gets the program back *as it is now* (e.g.
            with demos or instructions changed after creation), not as it was
            created. Returns `{:ok, document}`.
            """}
  def checkpoint_program(pool, program_id, opts \\ []) do
    opts = Options.validate!(opts, :call)

    checkpoint(pool, program_id, opts)
  end

  @api_doc {:import_program,
            """
            Recreates a program from a document made by `export_program/3` (either
            its whole answer `%{"document" => doc}` or `doc` itself). Option
            `:program_id` names the new program (else the document's id is used, or
            the client picks one for the default session). Recorded for replay.
            """}
  def import_program(pool, document, opts \\ []) do
    opts = Options.validate!(opts, :import_program)

    document =
      case document do
        %{"document" => %{} = doc} when map_size(document) == 1 -> doc
        doc -> doc
      end

    args =
      %{"document" => document}
      |> put_opt("program_id", opts[:program_id])

    args =
      if session(opts) == nil and not is_map_key(args, "program_id"),
        do: Map.put(args, "program_id", document["program_id"] || generate_id("prog")),
        else: args

    mutate(pool, "import_program", args, opts, fn session, args ->
      {:put_program, session, "import_program", args}
    end)
  end

  # Host functions given inline where their names are expected (tool specs
  # with `:run`): the args with their names instead, and the specs, to
  # register first.
  defp inline_program(args) do
    {options, from_options} = inline_options(args["options"])
    {lm, from_lm} = inline_lm(args["lm"])
    {args |> Map.replace("options", options) |> Map.replace("lm", lm), from_options ++ from_lm}
  end

  defp inline_options(%{} = options) do
    {tools, from_tools} =
      case options["tools"] do
        tools when is_list(tools) ->
          {names, specs} = tools |> Enum.map(&inline_one/1) |> Enum.unzip()
          {names, Enum.concat(specs)}

        other ->
          {other, []}
      end

    {reward, from_reward} =
      case options["reward"] do
        %{"function" => function} = reward ->
          {name, specs} = inline_one(function)
          {Map.put(reward, "function", name), specs}

        other ->
          {other, []}
      end

    {options |> Map.replace("tools", tools) |> Map.replace("reward", reward),
     from_tools ++ from_reward}
  end

  defp inline_options(other), do: {other, []}

  defp inline_lm(%{} = lm) do
    {generator, from_top} = inline_one(lm["generator"])

    {extra, from_extra} =
      case lm["extra"] do
        %{"generator" => generator} = extra ->
          {name, specs} = inline_one(generator)
          {Map.put(extra, "generator", name), specs}

        other ->
          {other, []}
      end

    {lm |> Map.replace("generator", generator) |> Map.replace("extra", extra),
     from_top ++ from_extra}
  end

  defp inline_lm(other), do: {other, []}

  defp inline_one(value) do
    if HostFunction.spec?(value) do
      {declaration, _run} = HostFunction.split!(value)
      {declaration["name"], [value]}
    else
      {value, []}
    end
  end

  defp register_inline(_pool, [], _opts), do: {:ok, nil}
  defp register_inline(pool, specs, opts), do: Tools.register_tools(pool, specs, opts)
end
