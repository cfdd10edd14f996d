defmodule DSPyBridge.Pool.Store do
  @moduledoc false
  # The pool's ETS table: configuration, live workers, and the session records
  # replayed into a restarted worker.
  #
  # The table is named after the pool and owned by the pool supervisor, so it
  # outlives any worker. Rows:
  #
  #   * `{:config, map}` — size, load counters, registry, options;
  #   * `{{:worker, index}, pid, os_pid, status}` — the worker currently
  #     serving `index`;
  #   * `{{:rec, session_id, kind, key}, seq, command, args}` — what to replay:
  #     `kind` is `:lm` (the session's `configure_lm`), `:cache` (a worker-wide
  #     `configure_cache`), `:tool` (one host function's declaration, replayed
  #     with the session's others in one `register_tools`), `:signature` (a
  #     `register_signature` by its name) or `:program`
  #     (`create_program`/`import_program` with its program id). `session_id`
  #     `nil` is the default session, which lives on every worker;
  #   * `{{:fun, session_id, name}, run}` — a host function's implementation
  #     (see DSPyBridge.HostFunction), looked up by the worker process that
  #     gets its `callback`; it goes with its `:tool` record.
  #
  # Records are written by the worker process that got the successful
  # response, before the caller is answered, so a worker that dies after
  # answering has its change recorded before its replacement reads the table.

  alias DSPyBridge.Pool.Router

  @typedoc "A change to record once its command succeeds."
  @type record ::
          {:put_lm, String.t() | nil, map()}
          | {:put_cache, map()}
          | {:put_tools, String.t() | nil, [map()], %{String.t() => term()}}
          | {:delete_tool, String.t() | nil, String.t()}
          | {:put_program, String.t() | nil, String.t(), map()}
          | {:delete_program, String.t() | nil, String.t()}
          | {:put_signature, String.t() | nil, String.t(), map()}
          | {:delete_signature, String.t() | nil, String.t()}
          | {:delete_session, String.t() | nil}
          | {:checkpoint, String.t() | nil, String.t(), String.t() | nil}

  @doc false
  @spec new(atom()) :: :ets.tid() | atom()
  def new(name) do
    :ets.new(name, [:named_table, :public, :set, read_concurrency: true, write_concurrency: true])
  end

  @doc "The pool's configuration map; raises if `pool` is not running."
  @spec config(atom()) :: map()
  def config(pool) do
    :ets.lookup_element(pool, :config, 2)
  rescue
    ArgumentError -> raise ArgumentError, "no DSPyBridge.Pool named #{inspect(pool)} is running"
  end

  @doc false
  def put_config(table, config), do: :ets.insert(table, {:config, config})

  @doc false
  def register_worker(table, index, pid, os_pid, status) do
    :ets.insert(table, {{:worker, index}, pid, os_pid, status})
    :ok
  end

  @doc false
  # Counts the starts of the worker at `index` (restarts = starts - 1).
  def note_start(table, index) do
    :ets.update_counter(table, {:starts, index}, 1, {{:starts, index}, 0})
    :ok
  end

  @doc "How many times the worker at `index` was restarted."
  @spec restarts(atom(), non_neg_integer()) :: non_neg_integer()
  def restarts(table, index) do
    case :ets.lookup(table, {:starts, index}) do
      [{_, n}] -> max(n - 1, 0)
      [] -> 0
    end
  end

  @doc false
  def unregister_worker(table, index, pid) do
    :ets.match_delete(table, {{:worker, index}, pid, :_, :_})
    :ok
  rescue
    # the table is gone with its pool
    ArgumentError -> :ok
  end

  @doc "`{pid, os_pid, status}` of the worker at `index`, or `nil`."
  @spec worker(atom(), non_neg_integer()) :: {pid(), non_neg_integer(), atom()} | nil
  def worker(table, index) do
    case :ets.lookup(table, {:worker, index}) do
      [{_, pid, os_pid, status}] -> {pid, os_pid, status}
      [] -> nil
    end
  end

  @doc false
  @spec apply_record(atom(), record(), {:ok, term()}) :: :ok
  def apply_record(table, record, {:ok, result}) do
    case record do
      {:put_lm, session, args} ->
        put(table, {:rec, session, :lm, nil}, "configure_lm", args)

      {:put_cache, args} ->
        put(table, {:rec, nil, :cache, nil}, "configure_cache", args)

      {:put_tools, session, declarations, runs} ->
        for %{"name" => name} = declaration <- declarations do
          # the implementation first: a callback may follow the reply at once
          :ets.insert(table, {{:fun, session, name}, Map.fetch!(runs, name)})
          key = {:rec, session, :tool, name}
          # a name registered again keeps its place (the worker's order)
          seq =
            case :ets.lookup(table, key) do
              [{_, seq, _, _}] -> seq
              [] -> System.unique_integer([:monotonic, :positive])
            end

          :ets.insert(table, {key, seq, "register_tools", declaration})
        end

      {:delete_tool, session, name} ->
        :ets.delete(table, {:rec, session, :tool, name})
        :ets.delete(table, {:fun, session, name})

      {:put_program, session, command, args} ->
        program_id = program_id(args, result)
        args = args |> Map.put("program_id", program_id) |> resolved_signature(result)
        # keep the first seq so replay order stays creation order
        put(table, {:rec, session, :program, program_id}, command, args)

      {:put_signature, session, name, args} ->
        put(table, {:rec, session, :signature, name}, "register_signature", args)

      {:delete_signature, session, name} ->
        :ets.delete(table, {:rec, session, :signature, name})

      {:delete_program, session, program_id} ->
        :ets.delete(table, {:rec, session, :program, program_id})

      {:delete_session, session} ->
        forget_session(table, session)

      # an export_program's document, as the program's replay record (checkpoint/5)
      {:checkpoint, session, program_id, source} ->
        with %{"document" => document} <- result,
             do: checkpoint(table, session, program_id, document, source)
    end

    :ok
  rescue
    ArgumentError -> :ok
  end

  # A program made from a named signature (`signature: %{ref: name}`) keeps the
  # signature it was made from, whatever the name holds later: its record
  # replays the signature the worker resolved, not the name.
  defp resolved_signature(%{"signature" => %{"ref" => _}} = args, result) do
    case is_map(result) && Map.get(result, "signature") do
      %{} = signature -> Map.put(args, "signature", signature)
      signature when is_binary(signature) -> Map.put(args, "signature", signature)
      _ -> args
    end
  end

  defp resolved_signature(args, _result), do: args

  defp put(table, key, command, args) do
    seq = System.unique_integer([:monotonic, :positive])
    :ets.insert(table, {key, seq, command, args})
  end

  @doc false
  # Replaces a program's replay record by an import of its exported
  # `document`, so state changed after creation (demos, instructions, e.g.
  # from compilation) survives a restart. An LM given at creation keeps its
  # secrets, which exports omit: the LM recorded for program `source` (the
  # program itself, or the one a compiled program was made from). Returns
  # the document recorded.
  @spec checkpoint(atom(), String.t() | nil, String.t(), map(), String.t()) :: {:ok, map()}
  def checkpoint(table, session, program_id, document, source \\ nil) do
    key = {:rec, session, :program, program_id}

    seq =
      case :ets.lookup(table, key) do
        [{_, seq, _, _}] -> seq
        [] -> System.unique_integer([:monotonic, :positive])
      end

    document =
      case recorded_lm(table, session, source || program_id) do
        nil -> document
        lm -> Map.put(document, "lm", lm)
      end

    args = %{"program_id" => program_id, "document" => document}
    args = if session, do: Map.put(args, "session_id", session), else: args
    :ets.insert(table, {key, seq, "import_program", args})
    {:ok, document}
  end

  # The LM a program's replay record gives it, secrets included: the `lm`
  # of its `create_program`, or of the document it is imported from.
  defp recorded_lm(table, session, program_id) do
    case :ets.lookup(table, {:rec, session, :program, program_id}) do
      [{_, _, "create_program", %{"lm" => lm}}] -> lm
      [{_, _, "import_program", %{"document" => %{"lm" => lm}}}] -> lm
      _ -> nil
    end
  end

  @doc false
  def forget_session(table, session) do
    :ets.match_delete(table, {{:rec, session, :_, :_}, :_, :_, :_})
    :ets.match_delete(table, {{:fun, session, :_}, :_})
    :ok
  rescue
    ArgumentError -> :ok
  end

  @doc """
  The implementation of host function `name` of `session` (as a worker's
  `callback` names it: the default session is `"default"` on the wire, `nil`
  here): `{:ok, run}` or `:error`.
  """
  @spec host_function(atom(), String.t() | nil, String.t()) :: {:ok, term()} | :error
  def host_function(table, session, name) do
    keys =
      if session in [nil, "default"],
        do: [{:fun, session, name}, {:fun, nil, name}],
        else: [{:fun, session, name}]

    Enum.find_value(keys, :error, fn key ->
      case :ets.lookup(table, key) do
        [{_, run}] -> {:ok, run}
        [] -> nil
      end
    end)
  rescue
    ArgumentError -> :error
  end

  @doc """
  The batches of commands to replay into the worker at `index` of a pool of
  `size`: first the host functions, one `register_tools` per session (so
  that LM configurations and programs naming them find them declared), then
  every LM and cache configuration and named signature (sent concurrently),
  then every program (sent concurrently, in creation order).
  """
  @spec replay_batches(atom(), non_neg_integer(), pos_integer()) :: [[{String.t(), map()}]]
  def replay_batches(table, index, size),
    do: replay_batches(table, &(&1 == nil or Router.index_for(&1, size) == index))

  @doc """
  The batches of commands to replay for the sessions `replay?.(session)`
  accepts (`nil` is the default session), in the order of `replay_batches/3`.
  """
  @spec replay_batches(atom(), (String.t() | nil -> boolean())) :: [[{String.t(), map()}]]
  def replay_batches(table, replay?) do
    records =
      table
      |> :ets.match_object({{:rec, :_, :_, :_}, :_, :_, :_})
      |> Enum.filter(fn {{:rec, session, _, _}, _, _, _} -> replay?.(session) end)
      |> Enum.sort_by(fn {_, seq, _, _} -> seq end)

    {tools, records} =
      Enum.split_with(records, fn {{:rec, _, kind, _}, _, _, _} -> kind == :tool end)

    {config, programs} =
      Enum.split_with(records, fn {{:rec, _, kind, _}, _, _, _} ->
        kind in [:lm, :cache, :signature]
      end)

    [tool_commands(tools), to_commands(config), to_commands(programs)]
  end

  @doc false
  # The commands that make a worker holding the session as it was before
  # `record` (already applied to `table`) hold it as the record left it: a
  # put replays its record (a program is deleted first: creating it again
  # would find it there), a delete deletes. For a clustered pool's owner,
  # when the record was made on another worker (by its node's cluster member).
  @spec commands_for(atom(), record(), {:ok, term()}) :: [{String.t(), map()}]
  def commands_for(table, record, {:ok, result}) do
    case record do
      {:put_lm, session, _} ->
        row_commands(table, {:rec, session, :lm, nil}, [])

      {:put_cache, _} ->
        row_commands(table, {:rec, nil, :cache, nil}, [])

      {:put_tools, session, declarations, _} ->
        tool_commands(tool_rows(session, declarations))

      {:delete_tool, session, name} ->
        [with_session("delete_tool", %{"name" => name}, session)]

      {:put_program, session, _, args} ->
        program_commands(table, session, program_id(args, result))

      {:checkpoint, session, program_id, _} ->
        program_commands(table, session, program_id)

      {:put_signature, session, name, _} ->
        row_commands(table, {:rec, session, :signature, name}, [])

      {:delete_signature, session, name} ->
        [with_session("delete_signature", %{"name" => name}, session)]

      {:delete_program, session, id} ->
        [with_session("delete_program", %{"program_id" => id}, session)]

      {:delete_session, session} ->
        [with_session("end_session", %{}, session)]
    end
  end

  # the id the worker gave a program (it picks one when none was given)
  defp program_id(args, result),
    do: (is_map(result) && Map.get(result, "program_id")) || Map.get(args, "program_id")

  defp program_commands(_table, _session, nil), do: []

  defp program_commands(table, session, program_id) do
    delete = with_session("delete_program", %{"program_id" => program_id}, session)
    row_commands(table, {:rec, session, :program, program_id}, [delete])
  end

  defp row_commands(table, key, first) do
    case :ets.lookup(table, key) do
      [{_, _, command, args}] -> first ++ [{command, args}]
      [] -> []
    end
  end

  defp tool_rows(session, declarations),
    do: for(d <- declarations, do: {{:rec, session, :tool, d["name"]}, 0, "register_tools", d})

  defp with_session(command, args, nil), do: {command, args}
  defp with_session(command, args, session), do: {command, Map.put(args, "session_id", session)}

  # One `register_tools` per session, its declarations in registration order.
  defp tool_commands(records) do
    records
    |> Enum.group_by(fn {{:rec, session, _, _}, _, _, _} -> session end)
    |> Enum.sort_by(fn {_, [{_, seq, _, _} | _]} -> seq end)
    |> Enum.map(fn {session, records} ->
      args = %{"tools" => Enum.map(records, fn {_, _, _, declaration} -> declaration end)}
      {"register_tools", if(session, do: Map.put(args, "session_id", session), else: args)}
    end)
  end

  defp to_commands(records),
    do: Enum.map(records, fn {_, _, command, args} -> {command, args} end)

  @doc false
  # Every replay record and host function row, to copy to another node's
  # table (the cluster member's, when its pool joins the cluster).
  @spec records(atom()) :: [tuple()]
  def records(table) do
    :ets.match_object(table, {{:rec, :_, :_, :_}, :_, :_, :_}) ++
      :ets.match_object(table, {{:fun, :_, :_}, :_})
  end

  @doc false
  # Adds rows from `records/1` of another node, keeping the rows this table
  # already has (they came by replication, so they are at least as new).
  @spec load_records(atom(), [tuple()]) :: :ok
  def load_records(table, rows) do
    Enum.each(rows, &:ets.insert_new(table, &1))
  end

  @doc false
  # The sessions (not the default one) that have records.
  @spec sessions(atom()) :: [String.t()]
  def sessions(table) do
    table
    |> :ets.match({{:rec, :"$1", :_, :_}, :_, :_, :_})
    |> Enum.flat_map(fn [session] -> if session, do: [session], else: [] end)
    |> Enum.uniq()
  end

  @doc "Counts of recorded sessions, programs and host functions (for `DSPyBridge.stats/1`)."
  @spec counts(atom()) :: %{
          sessions: non_neg_integer(),
          programs: non_neg_integer(),
          tools: non_neg_integer()
        }
  def counts(table) do
    records = :ets.match(table, {{:rec, :"$1", :"$2", :_}, :_, :_, :_})

    %{
      sessions: records |> Enum.map(&hd/1) |> Enum.reject(&is_nil/1) |> Enum.uniq() |> length(),
      programs: Enum.count(records, fn [_, kind] -> kind == :program end),
      tools: Enum.count(records, fn [_, kind] -> kind == :tool end)
    }
  end
end
