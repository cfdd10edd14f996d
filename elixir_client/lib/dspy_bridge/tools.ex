defmodule DSPyBridge.Tools do
  @moduledoc false
  # The host-function (tool) functions of `DSPyBridge`, which delegates to them.
  alias DSPyBridge.{HostFunction, Options}
  import DSPyBridge.Calls

  use DSPyBridge.ApiDocs

  @api_doc {:register_tools,
            """
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
            """}
  def register_tools(pool, tools, opts \\ []) when is_list(tools) do
    opts = Options.validate!(opts, :call)
    {declarations, runs} = tools |> Enum.map(&HostFunction.split!/1) |> Enum.unzip()
    runs = declarations |> Enum.map(& &1["name"]) |> Enum.zip(runs) |> Map.new()

    mutate(pool, "register_tools", %{"tools" => declarations}, opts, fn session, _ ->
      {:put_tools, session, declarations, runs}
    end)
  end

  @api_doc {:list_tools,
            """
            Lists a session's host functions as the worker declares them:
            `{:ok, %{"session_id" => ..., "tools" => [%{"name" => ..., "description"
            => ..., "parameters" => ...}]}}`.
            """}
  def list_tools(pool, opts \\ []),
    do: read(pool, "list_tools", %{}, Options.validate!(opts, :call))

  @api_doc {:delete_tool,
            """
            Deletes a host function of a session (`:not_found` if it has none of that
            name); it is no longer replayed, and a later callback for it gets an
            error answer. Programs that name it keep the name: calling it is then the
            worker's "not declared" case.
            """}
  def delete_tool(pool, name, opts \\ []) do
    opts = Options.validate!(opts, :call)
    name = to_string(name)

    mutate(pool, "delete_tool", %{"name" => name}, opts, fn session, _ ->
      {:delete_tool, session, name}
    end)
  end
end
