defmodule DSPyBridge.Execution do
  @moduledoc false
  # Running programs (execute, stream, evaluate, compile): `DSPyBridge` delegates here.
  alias DSPyBridge.{Cluster, Compiler, Options, Streaming}
  import DSPyBridge.Calls
  import DSPyBridge.Args, only: [lm_args: 1, normalize: 1]

  use DSPyBridge.ApiDocs

  @api_doc {:execute,
            """
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
            """}
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

  @api_doc {:execute_program,
            """
            `execute/4` under its DSPex name, taking its options as a keyword list
            or a map (atom or string keys), and `:lm_config` as `:lm` (not both):

                DSPyBridge.execute_program(pool, id, %{question: "What is DSPy?"},
                  %{lm_config: %{provider: :anthropic, model: "claude-3-haiku-20240307"}})
            """}
  def execute_program(pool, program_id, inputs, opts \\ []),
    do: execute(pool, program_id, inputs, dspex_opts(opts))

  @api_doc {:stream,
            """
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
            """}
  def stream(pool, program_id, inputs, opts \\ []) do
    opts = Options.validate!(opts, :stream)
    # raises now, not in the task, for a pool that no node runs (a clustered
    # pool may be served by other nodes only)
    _ = Cluster.broadcast_nodes(pool)

    Streaming.stream(fn on_chunk ->
      execute(pool, program_id, inputs, [on_chunk: on_chunk] ++ opts)
    end)
  end

  @api_doc {:evaluate,
            """
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
            """}
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

  @api_doc {:compile,
            """
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
            """}
  def compile(pool, program_id, optimizer, opts) do
    opts = Options.validate!(opts, :compile)
    Compiler.run(pool, session(opts), program_id, optimizer, opts)
  end

  defp dspex_opts(%{} = opts), do: opts |> Enum.map(&option_key/1) |> dspex_opts()

  defp dspex_opts(opts) when is_list(opts) do
    with true <- Keyword.keyword?(opts),
         {lm, opts} when lm != nil <- Keyword.pop(opts, :lm_config) do
      if Keyword.get(opts, :lm) != nil,
        do: raise(ArgumentError, "DSPyBridge.execute_program/4: give :lm or :lm_config, not both")

      [{:lm, lm} | Keyword.delete(opts, :lm)]
    else
      _ -> opts
    end
  end

  defp dspex_opts(opts), do: opts

  defp option_key({key, value}) when is_atom(key), do: {key, value}

  defp option_key({key, value}) when is_binary(key) do
    case Enum.find([:lm_config | Options.keys(:execute)], &(Atom.to_string(&1) == key)) do
      nil ->
        raise ArgumentError, "unknown option #{inspect(key)} for DSPyBridge.execute_program/4"

      atom ->
        {atom, value}
    end
  end

  defp option_key(other),
    do: raise(ArgumentError, "DSPyBridge.execute_program/4: bad option #{inspect(other)}")
end
