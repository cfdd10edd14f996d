defmodule DSPyBridge do
  @moduledoc """
  Run DSPy programs from Elixir on a supervised pool of Python workers.

  Start a `DSPyBridge.Pool` in your supervision tree, then call this module:

      children = [{DSPyBridge.Pool, name: MyApp.DSPy, size: 4, default_lm: [model: "mock"]}]
      Supervisor.start_link(children, strategy: :one_for_one)

      {:ok, _} = DSPyBridge.configure_lm(MyApp.DSPy, [model: "openai/gpt-4o-mini",
                                                      api_key_env: "OPENAI_API_KEY"],
                                         session: "tenant-1")
      {:ok, %{"program_id" => id}} =
        DSPyBridge.create_program(MyApp.DSPy, "question -> answer", session: "tenant-1")
      {:ok, %{"outputs" => %{"answer" => answer}}} =
        DSPyBridge.execute(MyApp.DSPy, id, %{question: "What is DSPy?"}, session: "tenant-1")

  ## Options

  Every function validates its options: an unknown option or a value of
  the wrong type raises `ArgumentError` naming it (see `DSPyBridge.Options`).
  In short: `:session` is the session id (a string). A session's LM,
  programs and usage are isolated from every other session's, and all its
  calls go to the same worker. Without it, calls use the shared default
  session: its mutations are applied to every worker, its reads and
  executions go to the least-loaded worker.

  #{DSPyBridge.Options.markdown([:call, :execute, :stream, :evaluate, :import_program, :end_session, :configure_cache, :stats], "###")}
  ## Results

  Every function returns `{:ok, result}` or `{:error, %DSPyBridge.Error{}}`
  (see `DSPyBridge.Error` for the error types, all atoms).

  Results that come from the worker are returned **as decoded, with string
  keys** (`%{"outputs" => %{"answer" => "..."}, "usage" => ...}`): that is
  every function here except `stats/2` and `subscribe/1`, whose shapes the
  client defines and which use **atom keys** (worker-reported data nested
  inside them keeps its string keys). Arguments may use atom or string
  keys, and keyword lists where a map is expected.

  ## Host functions

  Elixir functions can serve the worker while it runs a program: the tools
  of a ReAct agent, the reward of `best_of_n`/`refine`, the answers of a
  mock LM. Declare them with `register_tools/3` (or inline in
  `create_program/3`); the worker calls back for them, and the client runs
  each call in a supervised task, never in a worker process:

      {:ok, _} =
        DSPyBridge.register_tools(MyApp.DSPy, [
          %{name: "lookup_order", description: "Finds an order by id",
            parameters: %{type: "object", properties: %{order_id: %{type: "string"}}},
            run: &MyApp.Orders.lookup/1}
        ], session: "tenant-1")

      {:ok, _} =
        DSPyBridge.create_program(MyApp.DSPy,
          %{program_id: "agent", signature: "question -> answer", program_type: :react,
            options: %{tools: ["lookup_order"], max_iters: 5}},
          session: "tenant-1")

      {:ok, %{"outputs" => %{"answer" => answer}, "trajectory" => steps}} =
        DSPyBridge.execute(MyApp.DSPy, "agent", %{question: "Where is order A-17?"},
          session: "tenant-1")

  ## Compiling and streaming

  `compile/4` improves a program with one of DSPy's optimizers, reporting
  its progress to an `on_progress:` function as it goes; the compiled
  program is recorded, so a restarted worker gets it back compiled. With a
  `checkpoint:` (workers started with `--checkpoint-dir`) and `resume:
  true`, a compile whose worker dies is issued again on the restarted
  worker, replaying the LM answers already paid for:

      {:ok, %{"score_before" => before, "score_after" => after_}} =
        DSPyBridge.compile(MyApp.DSPy, id, :bootstrap_few_shot,
          session: "tenant-1", trainset: trainset, valset: valset, metric: "exact_match",
          on_progress: fn %{"done" => done, "total" => total} -> IO.write("\\r\#{done}/\#{total}") end)

  `stream/4` runs a program like `execute/4` and returns a `Stream` of its
  answer's chunks as the worker writes them, ending with `{:done, result}`
  (or `{:error, error}`); `execute/4` takes `on_chunk:` for the same as a
  callback:

      DSPyBridge.stream(MyApp.DSPy, id, %{question: "What is DSPy?"}, session: "tenant-1")
      |> Enum.each(fn
        {:chunk, "answer", text} -> IO.write(text)
        _ -> :ok
      end)

  ## Events

  `subscribe/1` makes the calling process receive
  `{:dspy_bridge_event, %DSPyBridge.Event{}}` messages: the workers' `ready`,
  `session_evicted`, `progress`, `stream`, `stream_status`, `engine_failed`,
  `callback` and `callback_abandoned` events, and the client's own
  `worker_exited`, `replayed` and `late_reply_dropped`. Events are also
  logged with `Logger`, and sent as `:telemetry` events when `:telemetry`
  is loaded (see `DSPyBridge.Telemetry`). The events of one request
  (`progress`, `stream`, `stream_status`) also reach that call's own
  `on_progress:` / `on_chunk:` function, or its stream.
  """

  alias DSPyBridge.{Args, Compiler, Error, HostFunction, Options, Pool, Streaming}
  alias DSPyBridge.Pool.Store

  @typedoc "A pool name, as given to `DSPyBridge.Pool` in `:name`."
  @type pool :: atom()

  @typedoc "Options common to all calls: `:session`, `:timeout`, `:worker`."
  @type option ::
          {:session, String.t() | atom() | nil}
          | {:timeout, timeout()}
          | {:worker, non_neg_integer()}

  @typedoc """
  A host function (see `register_tools/3`): a map or keyword list with

    * `:name` (required) — a string or atom: 1–64 characters, a letter or
      `_` first, then letters, digits and `_` (an LM writes it back);
      `finish` is reserved;
    * `:run` (required) — the implementation: a function of the callback's
      `args` (arity 1); a function of `args` and a context map (arity 2:
      `:function`, `:purpose` (`"tool"`, `"reward"`, `"mock"`),
      `:session_id`, `:request_id`, `:callback_id`, `:timeout_ms`); or
      `{module, function, extra_args}`, called as `apply(module, function,
      [args | extra_args])`;
    * `:description` — what it does, shown to the LM (up to 8,192
      characters);
    * `:parameters` — a JSON schema (an `object` schema, as a map) of its
      arguments; the worker checks the LM's arguments against it before
      asking the host.
  """
  @type tool :: keyword() | map()

  @typedoc "The result of every call."
  @type result(ok) :: {:ok, ok} | {:error, Error.t()}

  @typedoc """
  An LM configuration: a model string (`"mock"`, `"openai/gpt-4o-mini"`) or
  a keyword list / map with `:model` and any of `:api_key`, `:api_key_env`,
  `:api_base`, `:temperature`, `:top_p`, `:max_tokens`, `:timeout_s`,
  `:num_retries`, `:cache`, `:extra`.
  """
  @type lm :: String.t() | keyword() | map()

  @doc """
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
  """
  @spec configure_lm(pool(), lm(), [option()]) :: result(map())
  def configure_lm(pool, lm, opts \\ []) do
    opts = Options.validate!(opts, :call)
    {args, inline} = inline_lm(lm_args(lm))

    with {:ok, _} <- register_inline(pool, inline, opts) do
      mutate(pool, "configure_lm", args, opts, fn session, args ->
        {:put_lm, session, args}
      end)
    end
  end

  @doc """
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
  """
  @spec create_program(pool(), String.t() | keyword() | map(), [option()]) :: result(map())
  def create_program(pool, spec, opts \\ []) do
    opts = Options.validate!(opts, :call)

    args =
      case spec do
        s when is_binary(s) -> %{"signature" => s}
        other -> normalize(other)
      end

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

  @doc """
  Declares host functions in a session (or, without `session:`, in the
  default session of every worker): the tools of `react` programs, the
  rewards of `best_of_n`/`refine` programs, the generators of mock LMs.
  Each is a `t:tool/0`: a name, the Elixir function that implements it,
  and, for a tool, the description and JSON schema of its arguments the LM
  is shown.

      DSPyBridge.register_tools(pool, [
        %{name: "lookup_order",
          description: "Finds an order by id",
          parameters: %{type: "object", properties: %{order_id: %{type: "string"}},
                        required: ["order_id"]},
          run: &MyApp.Orders.lookup/1},
        [name: "score", run: {MyApp.Scores, :score, []}]
      ], session: "acme")

  Returns `{:ok, %{"session_id" => ..., "registered" => [names], "tools" =>
  count}}`. Registering a name again replaces its declaration and its
  function. Raises `ArgumentError` for a spec without a `:name` or a
  `:run` of the wrong kind; the worker checks the rest (`:invalid_args`
  naming the field, `:limit_exceeded` past 128 per session).

  ## How a host function runs

  While it serves a request, the worker asks for a function with a
  `callback` event; the client looks the function up and runs it in a
  task under the pool's `Task.Supervisor`, never in the worker process (so
  a slow function holds up nothing but its own request), with the
  callback's `timeout_ms` (the request's time left, at most the worker's
  `--callback-timeout-ms`) as its deadline. It is called with the
  callback's `args` (string keys, as decoded):

    * a tool (`react`): the arguments the LM chose, already checked against
      `:parameters`;
    * a reward: `%{"inputs" => ..., "outputs" => ...}`, one attempt's;
    * a mock generator: `%{"model" => ..., "inputs" => ..., "outputs" =>
      [names], "instructions" => ..., "demos" => n}`.

  What it returns is the answer:

    * `{:ok, value}`, or any other value, is the result (for a tool, the
      observation the LM sees; for a reward, a number; for a generator, a
      map of output fields or one value). Atom keys and keyword lists are
      sent as maps with string keys.
    * `{:error, reason}` is an error answer: `reason` a string (the
      message), an exception, or a map / keyword list with `:message` and
      optionally `:type` and `:retryable`.
    * A raise, throw or exit, a value that cannot be sent as msgpack (a
      tuple, a pid, ...), or no answer before the deadline (the task is
      then killed) are error answers too. The worker process never crashes
      on a host function.

  A tool's error becomes its observation (`"Execution error in <name>:
  <message>"`) and the agent goes on; a reward's or a generator's fails
  the request with `:host_error` (`details["reason"]`: `"error"`,
  `"malformed"`, `"timeout"`, `"unknown_function"`). When the worker stops
  waiting (`callback_abandoned`: the request timed out, was cancelled or
  ended), the task is killed, and so it is when the worker process ends.
  Each call emits `[:dspy_bridge, :tool, :start]` and `[:dspy_bridge,
  :tool, :stop]` (see `DSPyBridge.Telemetry`).

  ## Replay

  The declarations and their functions are recorded with the session: a
  restarted worker gets them back (one `register_tools` per session,
  before the session's LM and programs are replayed), and they keep
  working. After a restart every program sees the latest declaration of
  each of its tools (a program made before a name was registered again
  keeps the older description only until then). `end_session/3` and
  `delete_tool/3` forget them.
  """
  @spec register_tools(pool(), [tool()], [option()]) :: result(map())
  def register_tools(pool, tools, opts \\ []) when is_list(tools) do
    opts = Options.validate!(opts, :call)
    {declarations, runs} = tools |> Enum.map(&HostFunction.split!/1) |> Enum.unzip()
    runs = declarations |> Enum.map(& &1["name"]) |> Enum.zip(runs) |> Map.new()

    mutate(pool, "register_tools", %{"tools" => declarations}, opts, fn session, _ ->
      {:put_tools, session, declarations, runs}
    end)
  end

  @doc """
  Lists a session's host functions as the worker declares them:
  `{:ok, %{"session_id" => ..., "tools" => [%{"name" => ..., "description"
  => ..., "parameters" => ...}]}}`.
  """
  @spec list_tools(pool(), [option()]) :: result(map())
  def list_tools(pool, opts \\ []),
    do: read(pool, "list_tools", %{}, Options.validate!(opts, :call))

  @doc """
  Deletes a host function of a session (`:not_found` if it has none of that
  name); it is no longer replayed, and a later callback for it gets an
  error answer. Programs that name it keep the name: calling it is then the
  worker's "not declared" case.
  """
  @spec delete_tool(pool(), String.t() | atom(), [option()]) :: result(map())
  def delete_tool(pool, name, opts \\ []) do
    opts = Options.validate!(opts, :call)
    name = to_string(name)

    mutate(pool, "delete_tool", %{"name" => name}, opts, fn session, _ ->
      {:delete_tool, session, name}
    end)
  end

  @doc """
  Runs a program on `inputs` (a map of input field values).

  Options besides `:session` and `:timeout`: `:lm` (an `t:lm/0` overriding
  the program's and session's LM for this call) and `:config` (per-call
  settings such as `%{temperature: 0.0}`).

  Returns `%{"outputs" => %{field => value}, "lm" => model, "usage" => ...,
  "duration_ms" => ...}`.

  ## Streaming

  With `on_chunk: fun` (or `stream: true`) the worker streams the output
  fields as it writes them, and `fun` is called **in the calling process**,
  while it waits, with each item as it arrives (all of them before the
  call returns):

    * `{:chunk, field, text}` — the next piece of output field `field`
      (fields in the order they are written; for `chain_of_thought`,
      `"reasoning"` first);
    * `{:status, message}` — what a program with several steps is doing
      (a `react` agent's tool starting or ending, say).

  The call then returns as without streaming, with the full outputs. An
  answer DSPy's cache already held comes whole, with no chunks. An
  exception raised by `fun` is raised by the call (the worker finishes
  the answer on its own, and its reply is dropped). See `stream/4` for
  the same as an Elixir `Stream`.

      DSPyBridge.execute(pool, "qa", %{question: "Why is the sky blue?"},
        session: "s1",
        on_chunk: fn
          {:chunk, "answer", text} -> IO.write(text)
          _ -> :ok
        end)
  """
  @spec execute(pool(), String.t(), map() | keyword(), keyword()) :: result(map())
  def execute(pool, program_id, inputs, opts \\ []) do
    opts = Options.validate!(opts, :execute)
    streamed? = opts[:stream] == true or opts[:on_chunk] != nil

    args =
      %{"program_id" => program_id, "inputs" => normalize(inputs)}
      |> put_opt("lm", opts[:lm] && lm_args(opts[:lm]))
      |> put_opt("config", opts[:config] && normalize(opts[:config]))
      |> put_opt("stream", if(streamed?, do: true))

    read(pool, "execute_program", args, opts, Streaming.chunk_listener(opts[:on_chunk]))
  end

  @doc """
  Runs a program on `inputs` like `execute/4`, streaming its answer: returns
  an Elixir `Stream` (lazy: nothing is sent until it is enumerated) whose
  elements are

    * `{:chunk, field, text}` — the next piece of output field `field`, as
      the worker writes it (for `chain_of_thought`, `"reasoning"` first);
    * `{:status, message}` — what a program with several steps is doing
      (a `react` agent's tool starting or ending, say);
    * last, exactly one of `{:done, result}` — the same `result` as
      `execute/4`'s (`result["outputs"]` holds the full fields) — or
      `{:error, %DSPyBridge.Error{}}` — the call failed (after whatever
      chunks came before); the stream never raises for a failed call.

  An answer DSPy's cache already held comes whole: no chunks, only
  `{:done, result}`.

      DSPyBridge.stream(pool, "qa", %{question: "Why is the sky blue?"}, session: "s1")
      |> Enum.each(fn
        {:chunk, "answer", text} -> IO.write(text)
        {:status, message} -> IO.puts("[\#{message}]")
        {:done, %{"outputs" => outputs}} -> IO.puts("\\n\#{inspect(outputs)}")
        {:error, error} -> IO.puts("\\nfailed: \#{Exception.message(error)}")
        _other_field -> :ok
      end)

  The call is made when the stream is enumerated, in a task linked to the
  enumerating process, which receives the items as messages. Halting the
  stream early (`Enum.take/2`, say) kills that task; the worker finishes the
  answer on its own (within the call's timeout) and what it sends for it
  is dropped. Options: those of `execute/4` but `:stream` and `:on_chunk`
  (validated at once: an unknown option raises `ArgumentError` here, not
  when the stream is run).
  """
  @spec stream(pool(), String.t(), map() | keyword(), keyword()) :: Enumerable.t()
  def stream(pool, program_id, inputs, opts \\ []) do
    opts = Options.validate!(opts, :stream)
    # raises now, not in the task, for a pool that is not running
    _ = Store.config(pool)

    Streaming.stream(fn on_chunk ->
      execute(pool, program_id, inputs, [on_chunk: on_chunk] ++ opts)
    end)
  end

  @doc """
  Scores a program over `devset` with a named `metric`.

  `devset` is a list of examples, each a map of the program's input field values and
  the expected value of the field the metric compares. `metric` is a name
  (`"exact_match"`, `"contains"`, `"f1"`, `"json_field"`) or a map with its options
  (`%{name: "f1", field: "answer", threshold: 0.6}`). An example that fails or runs out
  of time counts as failed with its error; it never fails the evaluation.

  While it runs, the worker sends `progress` events (at most about four a
  second, and one at the end): with `on_progress: fun`, `fun` is called
  **in the calling process**, while it waits, with each one's map as it
  arrives (string keys: `"stage" => "evaluate"`, `"done"`, `"total"`,
  `"score"` (the mean so far), `"request_id"`), all before the call
  returns. The events of this call reach only this call, however many run
  at once. They also go to the pool's subscribers (see `subscribe/1`).

  Returns `%{"score" => mean, "total" => n, "passed" => n, "failed_examples" => [...],
  ...}`.
  """
  @spec evaluate(pool(), String.t(), [map()], String.t() | map(), keyword()) :: result(map())
  def evaluate(pool, program_id, devset, metric, opts \\ []) do
    opts = Options.validate!(opts, :evaluate)

    args =
      %{"program_id" => program_id, "devset" => Enum.map(devset, &normalize/1)}
      |> Map.put("metric", if(is_binary(metric), do: metric, else: normalize(metric)))
      |> put_opt("lm", opts[:lm] && lm_args(opts[:lm]))
      |> put_opt("max_concurrency", opts[:max_concurrency])
      |> put_opt("example_timeout_ms", opts[:example_timeout_ms])
      |> put_opt("per_example", opts[:per_example])

    read(pool, "evaluate_program", args, opts, Streaming.progress_listener(opts[:on_progress]))
  end

  @doc """
  Compiles (improves) a program with one of DSPy's optimizers
  (`compile_program`): `optimizer` is `"labeled_few_shot"`,
  `"bootstrap_few_shot"`, `"bootstrap_few_shot_with_random_search"`,
  `"simba"`, `"mipro_v2"` or `"gepa"` (a string or atom; see the protocol
  for their options).

      {:ok, %{"score_before" => before, "score_after" => after_}} =
        DSPyBridge.compile(pool, "qa", :bootstrap_few_shot,
          session: "s1",
          trainset: [%{question: "2+2?", answer: "4"}, ...],
          valset: [%{question: "3+3?", answer: "6"}, ...],
          metric: "exact_match",
          options: %{max_bootstrapped_demos: 2},
          on_progress: fn %{"done" => done, "total" => total} ->
            IO.write("\\r\#{done}/\#{total}")
          end)

  Options (`:trainset` and `:metric` are required):

  #{DSPyBridge.Options.table(:compile)}
  `:trainset` and `:valset` are examples as in `evaluate/5`'s devset (the
  input values and the expected value of the metric's field, other output
  values as labels); `:metric` is any `evaluate/5` metric. The compiled
  program — its demos and instructions — replaces the original, or, with
  `:target_program_id`, is stored beside it (an `:already_exists` error if
  that id is taken) with the original's type, options and LM.

  Returns the worker's answer: `%{"program_id" => ..., "optimizer" => ...,
  "score_before" => ..., "score_after" => ..., "metric_calls" => n,
  "demos" => n, "instructions" => ..., "lm" => ..., "usage" => %{model =>
  ...}, "duration_ms" => ...}` (scores are `nil` without a `:valset`). A
  bad optimizer, option, metric or example is `{:error, %DSPyBridge.Error{type:
  :invalid_args}}` naming it, before any LM call.

  ## Progress

  `on_progress: fun` gets each `progress` event's map (string keys:
  `"stage" => "compile"`, `"done"` (metric evaluations so far),
  `"total"` (an estimate; the last event has `done` = `total` =
  `metric_calls`), `"score"` (the mean so far), `"request_id"`), called
  **in the calling process** while it waits, at most about four times a
  second and once at the end, all before `compile/4` returns. The events
  of this compile reach only this call, however many run at once; the
  worker process never waits for `fun`. An exception raised by `fun` is
  raised by `compile/4`. After a resume (below) the events start again
  from the beginning of the re-issued run.

  ## Replay of the compiled program

  Once the compile succeeds, the client exports the compiled program from
  the worker that compiled it and records it for replay (as
  `checkpoint_program/3` does), so a restarted worker gets the **compiled**
  program back, not the definition it was created from: in the place of the
  program's own record when it was replaced, as a record of its own under
  `:target_program_id` (keeping the original's LM, secrets included). If
  the worker dies between the compile's answer and that export, the
  compiled state is gone with it: the call returns `:worker_exited`
  (`details["reason"] == "not_recorded"`, with the worker's answer in
  `details["result"]`), or, with `:resume`, compiles again.

  Without `:session` the program lives on every worker: the compile runs
  on one (the least-loaded, or `:worker`), and the compiled program is then
  imported on the others (a program it replaces is deleted there first, so
  for a moment it is missing on them).

  ## Checkpoints and `resume: true`

  With `checkpoint: "id"` and workers started with `--checkpoint-dir DIR`
  (e.g. the pool's `extra_args: ["--checkpoint-dir", dir]`; without it,
  `:invalid_args`), every LM answer of the run is kept on disk, and the
  same compile issued again with the same checkpoint id replays the answers
  already paid for (`usage[model]["cached_requests"]`) instead of asking
  the LM again. It needs an LM whose answers may be cached (not a mock
  answering by call order: `sequence`, `fail`, `generator`).

  With `resume: true` as well, when the worker dies during the run the pool
  re-issues the same compile on the restarted worker, after its replay,
  and `compile/4` returns that result; up to 3 times (`resume: n`: `n`
  times), all within `:timeout`. Without `:resume` the caller gets the
  usual `{:error, %DSPyBridge.Error{type: :worker_exited}}`. `resume:`
  without `checkpoint:` raises `ArgumentError`.
  """
  @spec compile(pool(), String.t(), String.t() | atom(), keyword()) :: result(map())
  def compile(pool, program_id, optimizer, opts) do
    opts = Options.validate!(opts, :compile)
    Compiler.run(pool, session(opts), program_id, optimizer, opts)
  end

  @doc "Describes a program (string keys)."
  @spec get_program(pool(), String.t(), [option()]) :: result(map())
  def get_program(pool, program_id, opts \\ []),
    do: read(pool, "get_program", %{"program_id" => program_id}, Options.validate!(opts, :call))

  @doc "Lists the programs of a session (string keys, as the worker answers)."
  @spec list_programs(pool(), [option()]) :: result(term())
  def list_programs(pool, opts \\ []),
    do: read(pool, "list_programs", %{}, Options.validate!(opts, :call))

  @doc "Deletes a program; it is no longer replayed after a worker restart."
  @spec delete_program(pool(), String.t(), [option()]) :: result(term())
  def delete_program(pool, program_id, opts \\ []) do
    opts = Options.validate!(opts, :call)

    mutate(pool, "delete_program", %{"program_id" => program_id}, opts, fn session, _ ->
      {:delete_program, session, program_id}
    end)
  end

  @doc """
  Ends a session: the worker drops its programs, LM and usage, and the pool
  forgets its replay records.
  """
  @spec end_session(pool(), String.t(), [{:timeout, timeout()} | {:worker, non_neg_integer()}]) ::
          result(term())
  def end_session(pool, session_id, opts \\ []) when is_binary(session_id) do
    opts = opts |> Options.validate!(:end_session) |> Keyword.put(:session, session_id)

    mutate(pool, "end_session", %{}, opts, fn session, _ ->
      {:delete_session, session}
    end)
  end

  @doc """
  Exports a program: `{:ok, %{"document" => doc}}`, a msgpack-safe
  document (string keys) that `import_program/3` recreates in any session of
  any worker. Secrets (API keys given by value) are not exported.
  """
  @spec export_program(pool(), String.t(), [option()]) :: result(map())
  def export_program(pool, program_id, opts \\ []) do
    opts = Options.validate!(opts, :call)
    read(pool, "export_program", %{"program_id" => program_id}, opts)
  end

  @doc """
  Checkpoints a program for replay: exports its current state and records
  it, so a restarted worker gets the program back *as it is now* (e.g.
  with demos or instructions changed after creation), not as it was
  created. Returns `{:ok, document}`.
  """
  @spec checkpoint_program(pool(), String.t(), [option()]) :: result(map())
  def checkpoint_program(pool, program_id, opts \\ []) do
    opts = Options.validate!(opts, :call)

    with {:ok, %{"document" => doc}} <- export_program(pool, program_id, opts) do
      {:ok, _} = Store.checkpoint(Store.config(pool).table, session(opts), program_id, doc)
      {:ok, doc}
    end
  end

  @doc """
  Recreates a program from a document made by `export_program/3` (either
  its whole answer `%{"document" => doc}` or `doc` itself). Option
  `:program_id` names the new program (else the document's id is used, or
  the client picks one for the default session). Recorded for replay.
  """
  @spec import_program(pool(), map(), keyword()) :: result(map())
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

  @doc """
  Token usage and cost per model (string keys). With `session:` it is that
  session's usage; without, the default session's usage summed over all
  workers.
  """
  @spec get_usage(pool(), [option()]) :: result(map())
  def get_usage(pool, opts \\ []) do
    opts = Options.validate!(opts, :call)

    if session(opts) != nil do
      read(pool, "get_usage", %{}, opts)
    else
      with {:ok, results} <- all_workers(pool, "get_usage", %{}, opts) do
        {:ok, Enum.reduce(results, %{}, &merge_sum/2)}
      end
    end
  end

  @doc "Resets the usage counters of a session (or of the default session on every worker)."
  @spec reset_usage(pool(), [option()]) :: result(term())
  def reset_usage(pool, opts \\ []) do
    opts = Options.validate!(opts, :call)
    mutate(pool, "reset_usage", %{}, opts, fn _, _ -> nil end)
  end

  @doc """
  Lists sessions: `{:ok, %{"sessions" => [%{"session_id" => ..., "programs" => n,
  "lm" => model, "created_at" => ..., "last_used" => ..., "idle_s" => ...,
  "in_flight" => ..., "worker" => index}]}}` (string keys). Without `session:`
  every worker is asked and their lists are concatenated (the default
  session appears once per worker that has it); with `session:` only that
  session is listed, by its worker.
  """
  @spec list_sessions(pool(), [option()]) :: result(map())
  def list_sessions(pool, opts \\ []) do
    opts = Options.validate!(opts, :call)
    %{size: size} = Store.config(pool)

    indexes =
      if session(opts) != nil,
        do: [Pool.index_for(session(opts), size)],
        else: Enum.to_list(0..(size - 1))

    with {:ok, results} <- on_workers(pool, indexes, "list_sessions", %{}, opts) do
      sessions =
        for {index, %{"sessions" => list}} <- Enum.zip(indexes, results),
            session <- list,
            do: Map.put(session, "worker", index)

      {:ok, %{"sessions" => sessions}}
    end
  end

  @doc """
  Configures DSPy's cache on every worker (`:enable_memory`, `:enable_disk`,
  `:disk_dir`, `:memory_max_entries`, `:disk_size_limit_bytes`). Recorded
  for replay.
  """
  @spec configure_cache(pool(), keyword() | map(), [{:timeout, timeout()}]) :: result(map())
  def configure_cache(pool, settings, opts \\ []) do
    opts = Options.validate!(opts, :configure_cache)
    args = normalize(settings)

    with {:ok, _} = ok <-
           Pool.broadcast(pool, "configure_cache", args,
             timeout: Keyword.fetch!(opts, :timeout),
             record: {:put_cache, args}
           ) do
      ok
    end
  end

  @doc """
  Pings a worker (the session's, or the least-loaded one): `{:ok,
  %{"status" => "ok", "worker_id" => ..., "pid" => os_pid, "uptime_s" => ...,
  "in_flight" => ..., "dspy_loaded" => ...}}`.
  """
  @spec ping(pool(), [option()]) :: result(map())
  def ping(pool, opts \\ []), do: request(pool, "ping", %{}, Options.validate!(opts, :call))

  @doc """
  Pool statistics, with **atom keys**:

      %{pool: MyApp.DSPy, size: 2, sessions: 3, programs: 5, tools: 2,
        workers: [%{index: 0, status: :ready, os_pid: 1234, worker_id: "...",
                    in_flight: 0, queued: 0, requests: 10, timeouts: 0,
                    cancels_sent: 0, late_replies_dropped: 0, overloaded: 0,
                    restarts: 0, uptime_ms: 5000,
                    worker_stats: %{"requests" => ..., ...}}]}

  `worker_stats` is the worker's own `get_stats` answer (string keys), or
  `nil` if it could not be fetched (pass `worker_stats: false` to skip it).
  `sessions`/`programs`/`tools` count what the pool would replay (a
  default-session record once, however many workers hold it).
  """
  @spec stats(pool(), keyword()) :: {:ok, map()}
  def stats(pool, opts \\ []) do
    opts = Options.validate!(opts, :stats)
    config = Store.config(pool)
    fetch? = Keyword.fetch!(opts, :worker_stats)
    timeout = Keyword.fetch!(opts, :timeout)

    workers =
      pool
      |> Pool.workers()
      |> Enum.map(fn {index, pid, os_pid, status} ->
        Task.async(fn ->
          info =
            try do
              if pid, do: DSPyBridge.Worker.info(pid), else: %{}
            catch
              :exit, _ -> %{}
            end

          remote =
            if fetch? and status == :ready do
              case Pool.request(pool, nil, "get_stats", %{}, worker: index, timeout: timeout) do
                {:ok, s} -> s
                _ -> nil
              end
            end

          info
          |> Map.drop([:ready])
          |> Map.merge(%{index: index, os_pid: os_pid, status: Map.get(info, :status, status)})
          |> Map.put(:restarts, Store.restarts(config.table, index))
          |> Map.put(:worker_stats, remote)
        end)
      end)
      |> Task.await_many(timeout + 1_000)

    {:ok,
     Map.merge(Store.counts(config.table), %{pool: pool, size: config.size, workers: workers})}
  end

  @doc """
  Subscribes the calling process to the pool's events, delivered as
  `{:dspy_bridge_event, %DSPyBridge.Event{}}` until it exits or calls
  `unsubscribe/1`. The subscriber is monitored, not linked: it does not
  die with the pool.
  """
  @spec subscribe(pool()) :: :ok
  def subscribe(pool) do
    scope = Store.config(pool).registry

    unless self() in :pg.get_local_members(scope, :events),
      do: :ok = :pg.join(scope, :events, self())

    :ok
  end

  @doc "Stops delivering the pool's events to the calling process."
  @spec unsubscribe(pool()) :: :ok
  def unsubscribe(pool) do
    scope = Store.config(pool).registry
    if self() in :pg.get_local_members(scope, :events), do: :pg.leave(scope, :events, self())
    :ok
  end

  @doc """
  Sends any command to a worker, routed like the other calls (`:session`,
  `:worker`). The `:session` option only routes the call: put `session_id`
  in `args` yourself if the command takes one. The result is returned as
  decoded (string keys). Nothing is recorded for replay.

  This is also how a host reaches test-only commands of a worker started
  with `--enable-test-commands`, e.g. `request(pool, "sleep", %{ms: 100})`.
  """
  @spec request(pool(), String.t(), map() | keyword(), [option()]) :: result(term())
  def request(pool, command, args \\ %{}, opts \\ []) do
    opts = Options.validate!(opts, :call)

    Pool.request(pool, session(opts), command, normalize(args), call_opts(opts))
  end

  # -- helpers --------------------------------------------------------------------

  defp read(pool, command, args, opts, listen \\ nil) do
    session = session(opts)
    call_opts = call_opts(opts) ++ if(listen, do: [listen: listen], else: [])
    Pool.request(pool, session, command, put_opt(args, "session_id", session), call_opts)
  end

  # A state change: sent to the session's worker, or to every worker for the
  # default session; `record_fun` says what to record once it succeeds.
  defp mutate(pool, command, args, opts, record_fun) do
    session = session(opts)
    args = put_opt(args, "session_id", session)
    record = record_fun.(session, args)
    call_opts = call_opts(opts) ++ if(record, do: [record: record], else: [])

    if session != nil or is_integer(opts[:worker]),
      do: Pool.request(pool, session, command, args, call_opts),
      else: Pool.broadcast(pool, command, args, call_opts)
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
  defp register_inline(pool, specs, opts), do: register_tools(pool, specs, opts)

  defp all_workers(pool, command, args, opts) do
    %{size: size} = Store.config(pool)
    on_workers(pool, Enum.to_list(0..(size - 1)), command, args, opts)
  end

  defp on_workers(pool, indexes, command, args, opts) do
    args = put_opt(args, "session_id", session(opts))

    results =
      indexes
      |> Enum.map(fn i ->
        Task.async(fn ->
          Pool.request(pool, nil, command, args, Keyword.put(call_opts(opts), :worker, i))
        end)
      end)
      |> Task.await_many(:infinity)

    case Enum.find(results, &match?({:error, _}, &1)) do
      nil -> {:ok, Enum.map(results, fn {:ok, r} -> r end)}
      error -> error
    end
  end

  # (a `worker: nil` is not passed on: it means none)
  defp call_opts(opts), do: for({k, v} <- opts, k in [:timeout, :worker], v != nil, do: {k, v})

  # Session ids are strings on the wire; an atom is taken as its name, so
  # `:acme` and `"acme"` are the same session (and hash to the same worker).
  defp session(opts) do
    case Keyword.get(opts, :session) do
      nil -> nil
      s when is_binary(s) -> s
      s when is_atom(s) -> Atom.to_string(s)
      other -> raise ArgumentError, "session must be a string, got: #{inspect(other)}"
    end
  end

  @doc false
  defdelegate lm_args(lm), to: Args

  @doc false
  defdelegate normalize(term), to: Args

  defp put_opt(map, _key, nil), do: map
  defp put_opt(map, key, value), do: Map.put(map, key, value)

  defp generate_id(prefix),
    do: prefix <> "-" <> Base.encode16(<<:rand.uniform(0xFFFFFFFFFFFF)::48>>, case: :lower)

  # Sums numbers in maps merged from several workers (usage reports); for
  # "since" (when counting started) the earliest wins.
  defp merge_sum(a, b) when is_map(a) and is_map(b) do
    Map.merge(a, b, fn
      "since", x, y when is_number(x) and is_number(y) -> min(x, y)
      "since", x, y -> x || y
      _k, x, y -> merge_sum(x, y)
    end)
  end

  defp merge_sum(a, b) when is_number(a) and is_number(b), do: a + b
  defp merge_sum(nil, b), do: b
  defp merge_sum(a, _b), do: a
end
