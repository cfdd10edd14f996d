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

  alias DSPyBridge.{Args, Error, Execution, Programs, Sessions, Signatures, Tools}

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

  @doc Programs.doc(:configure_lm)
  @spec configure_lm(pool(), lm(), [option()]) :: result(map())
  defdelegate configure_lm(pool, lm, opts \\ []), to: Programs

  @doc Programs.doc(:create_program)
  @spec create_program(pool(), String.t() | keyword() | map(), [option()]) :: result(map())
  defdelegate create_program(pool, spec, opts \\ []), to: Programs

  @doc Tools.doc(:register_tools)
  @spec register_tools(pool(), [tool()], [option()]) :: result(map())
  defdelegate register_tools(pool, tools, opts \\ []), to: Tools

  @doc Tools.doc(:list_tools)
  @spec list_tools(pool(), [option()]) :: result(map())
  defdelegate list_tools(pool, opts \\ []), to: Tools

  @doc Tools.doc(:delete_tool)
  @spec delete_tool(pool(), String.t() | atom(), [option()]) :: result(map())
  defdelegate delete_tool(pool, name, opts \\ []), to: Tools

  @doc Execution.doc(:execute)
  @spec execute(pool(), String.t(), map() | keyword(), keyword()) :: result(map())
  defdelegate execute(pool, program_id, inputs, opts \\ []), to: Execution

  @doc Execution.doc(:execute_program)
  @spec execute_program(pool(), String.t(), map() | keyword(), keyword() | map()) ::
          result(map())
  defdelegate execute_program(pool, program_id, inputs, opts \\ []), to: Execution

  @doc Execution.doc(:stream)
  @spec stream(pool(), String.t(), map() | keyword(), keyword()) :: Enumerable.t()
  defdelegate stream(pool, program_id, inputs, opts \\ []), to: Execution

  @doc Execution.doc(:evaluate)
  @spec evaluate(pool(), String.t(), [map()], String.t() | map(), keyword()) :: result(map())
  defdelegate evaluate(pool, program_id, devset, metric, opts \\ []), to: Execution

  @doc Execution.doc(:compile)
  @spec compile(pool(), String.t(), String.t() | atom(), keyword()) :: result(map())
  defdelegate compile(pool, program_id, optimizer, opts), to: Execution

  @doc Programs.doc(:get_program)
  @spec get_program(pool(), String.t(), [option()]) :: result(map())
  defdelegate get_program(pool, program_id, opts \\ []), to: Programs

  @doc Programs.doc(:list_programs)
  @spec list_programs(pool(), [option()]) :: result(term())
  defdelegate list_programs(pool, opts \\ []), to: Programs

  @doc Programs.doc(:delete_program)
  @spec delete_program(pool(), String.t(), [option()]) :: result(term())
  defdelegate delete_program(pool, program_id, opts \\ []), to: Programs

  @doc Signatures.doc(:register_signature)
  @spec register_signature(pool(), String.t() | atom(), String.t() | keyword() | map(), [option()]) ::
          result(map())
  defdelegate register_signature(pool, name, signature, opts \\ []), to: Signatures

  @doc Signatures.doc(:get_signature)
  @spec get_signature(pool(), String.t() | atom(), [option()]) :: result(map())
  defdelegate get_signature(pool, name, opts \\ []), to: Signatures

  @doc Signatures.doc(:list_signatures)
  @spec list_signatures(pool(), [option()]) :: result(map())
  defdelegate list_signatures(pool, opts \\ []), to: Signatures

  @doc Signatures.doc(:delete_signature)
  @spec delete_signature(pool(), String.t() | atom(), [option()]) :: result(map())
  defdelegate delete_signature(pool, name, opts \\ []), to: Signatures

  @doc Sessions.doc(:end_session)
  @spec end_session(pool(), String.t(), [{:timeout, timeout()} | {:worker, non_neg_integer()}]) ::
          result(term())
  defdelegate end_session(pool, session_id, opts \\ []), to: Sessions

  @doc Programs.doc(:export_program)
  @spec export_program(pool(), String.t(), [option()]) :: result(map())
  defdelegate export_program(pool, program_id, opts \\ []), to: Programs

  @doc Programs.doc(:checkpoint_program)
  @spec checkpoint_program(pool(), String.t(), [option()]) :: result(map())
  defdelegate checkpoint_program(pool, program_id, opts \\ []), to: Programs

  @doc Programs.doc(:import_program)
  @spec import_program(pool(), map(), keyword()) :: result(map())
  defdelegate import_program(pool, document, opts \\ []), to: Programs

  @doc Sessions.doc(:get_usage)
  @spec get_usage(pool(), [option()]) :: result(map())
  defdelegate get_usage(pool, opts \\ []), to: Sessions

  @doc Sessions.doc(:reset_usage)
  @spec reset_usage(pool(), [option()]) :: result(term())
  defdelegate reset_usage(pool, opts \\ []), to: Sessions

  @doc Sessions.doc(:list_sessions)
  @spec list_sessions(pool(), [option()]) :: result(map())
  defdelegate list_sessions(pool, opts \\ []), to: Sessions

  @doc Sessions.doc(:configure_cache)
  @spec configure_cache(pool(), keyword() | map(), [{:timeout, timeout()}]) :: result(map())
  defdelegate configure_cache(pool, settings, opts \\ []), to: Sessions

  @doc Sessions.doc(:ping)
  @spec ping(pool(), [option()]) :: result(map())
  defdelegate ping(pool, opts \\ []), to: Sessions

  @doc Sessions.doc(:stats)
  @spec stats(pool(), keyword()) :: {:ok, map()}
  defdelegate stats(pool, opts \\ []), to: Sessions

  @doc Sessions.doc(:subscribe)
  @spec subscribe(pool()) :: :ok
  defdelegate subscribe(pool), to: Sessions

  @doc Sessions.doc(:unsubscribe)
  @spec unsubscribe(pool()) :: :ok
  defdelegate unsubscribe(pool), to: Sessions

  @doc Sessions.doc(:request)
  @spec request(pool(), String.t(), map() | keyword(), [option()]) :: result(term())
  defdelegate request(pool, command, args \\ %{}, opts \\ []), to: Sessions

  @doc """
  The worker that owns `session` in `pool`: `{node, index}` (`nil` when no
  node runs the pool). For a pool started with `cluster: true` the owner is
  chosen over the workers of every connected node (see `DSPyBridge.Cluster`);
  otherwise it is the local worker `DSPyBridge.Pool.index_for/2` names.
  """
  @spec whereis(pool(), String.t() | atom()) :: {node(), non_neg_integer()} | nil
  defdelegate whereis(pool, session), to: DSPyBridge.Cluster

  @doc false
  defdelegate lm_args(lm), to: Args

  @doc false
  defdelegate normalize(term), to: Args
end
