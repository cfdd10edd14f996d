defmodule DSPyBridge.Compiler do
  @moduledoc false
  # `compile/4` of the public API: `compile_program` sent to one worker (the
  # session's, or for the default session the least-loaded one), its
  # `progress` events given to the caller's `on_progress` as they come, and
  # the compiled program recorded for replay once the compile succeeds, as
  # an import of its export document (DSPyBridge.Pool.Store.checkpoint/5), in
  # the place of the program's record when it was replaced, as a new record
  # when it went to `target_program_id`. A session's compile asks for the
  # document in its own reply (`include_document`), which the worker that
  # compiled records like any change (a clustered pool's: on every pool
  # node), so a session that moves meanwhile cannot have another worker's
  # program recorded. The default session's document is exported from the
  # worker that compiled it, then recorded on each pool node and imported on
  # every other worker, since its programs live on every worker.
  #
  # `resume`: when the worker dies with the compile in flight, the pool
  # sends it again on the restarted worker (the worker's checkpoint replays
  # the answers already paid for); when it dies between the compile's answer
  # and the export, the compiled state is gone with it, and the compile is
  # issued again too (or, without resumes left, the caller gets
  # `:worker_exited`).

  require Logger

  alias DSPyBridge.{Args, Cluster, Error, Pool, Streaming}
  alias DSPyBridge.Cluster.Remote
  alias DSPyBridge.Pool.Store

  # each of the requests that record the result (export, and for the
  # default session the imports) has this long, whatever the compile took
  @record_timeout 30_000
  @default_resumes 3

  @doc """
  Runs the compile of `program_id` with `optimizer` in `session` (`nil`:
  the default session), `opts` as validated by `DSPyBridge.Options`
  (`:compile`). Raises `ArgumentError` for `resume:` without `checkpoint:`.
  """
  @spec run(atom(), String.t() | nil, String.t(), String.t() | atom(), keyword()) ::
          {:ok, map()} | {:error, Error.t()}
  def run(pool, session, program_id, optimizer, opts) do
    resumes = resumes(opts)

    if resumes > 0 and opts[:checkpoint] == nil do
      raise ArgumentError,
            "DSPyBridge.compile/4: resume: needs a checkpoint: (the re-issued compile " <>
              "replays the answers the checkpoint kept)"
    end

    # built here, on every path: a bad argument raises in the caller
    args =
      %{
        "program_id" => program_id,
        "optimizer" => to_string(optimizer),
        "trainset" => Enum.map(Keyword.fetch!(opts, :trainset), &Args.normalize/1),
        "metric" => metric(Keyword.fetch!(opts, :metric))
      }
      |> put_opt("valset", opts[:valset] && Enum.map(opts[:valset], &Args.normalize/1))
      |> put_opt("options", opts[:options] && Args.normalize(opts[:options]))
      |> put_opt("target_program_id", opts[:target_program_id])
      |> put_opt("checkpoint", opts[:checkpoint] && checkpoint(opts[:checkpoint]))
      |> put_opt("lm", opts[:lm] && Args.lm_args(opts[:lm]))
      |> put_opt("session_id", session)
      |> put_opt("include_document", if(session, do: true))

    timeout = Keyword.fetch!(opts, :timeout)

    case pool_node_for(pool, session) do
      nil -> compile(call(pool, session, args, opts, timeout), resumes)
      node -> run_on(node, [pool, session, program_id, optimizer, opts], timeout)
    end
  end

  # A default-session compile on a node with no pool of its own runs whole
  # on a pool node (which compiles on one of its workers and records the
  # result on every pool node); a session's goes to its owner by the pool's
  # routing, from anywhere.
  defp pool_node_for(pool, nil) do
    if Cluster.local_config(pool) == nil, do: hd(Cluster.broadcast_nodes(pool))
  end

  defp pool_node_for(_pool, _session), do: nil

  # `on_progress:` still runs here: the pool node gets a stand-in that sends
  # each event back.
  defp run_on(node, [pool, session, program_id, optimizer, opts], timeout) do
    listen = Streaming.progress_listener(opts[:on_progress])

    Cluster.forwarding(listen, fn forward ->
      opts =
        if forward, do: Keyword.put(opts, :on_progress, &forward.("progress", &1)), else: opts

      mfa = {__MODULE__, :run, [pool, session, program_id, optimizer, opts]}
      Remote.remote_call(node, mfa, timeout, "compile_program")
    end)
  end

  defp call(pool, session, args, opts, timeout) do
    deadline =
      if timeout == :infinity, do: :infinity, else: System.monotonic_time(:millisecond) + timeout

    %{
      pool: pool,
      session: session,
      index: worker_index(pool, session, opts[:worker]),
      args: args,
      listen: Streaming.progress_listener(opts[:on_progress]),
      deadline: deadline
    }
  end

  defp resumes(opts) do
    case Keyword.fetch!(opts, :resume) do
      true -> @default_resumes
      false -> 0
      n when is_integer(n) -> n
    end
  end

  defp compile(call, resumes) do
    opts =
      worker_opt(call) ++
        [timeout: remaining(call.deadline), resume: resumes] ++
        if(call.listen, do: [listen: call.listen], else: []) ++
        recorded_by_compile(call)

    with {:ok, result} <-
           Pool.request(call.pool, call.session, "compile_program", call.args, opts) do
      case record(call, result) do
        :ok ->
          {:ok, Map.delete(result, "document")}

        {:error, %Error{type: :worker_exited}} when resumes > 0 ->
          Logger.warning(
            "DSPyBridge.compile/4: the worker exited before the compiled program " <>
              "#{inspect(target(call, result))} was recorded; compiling it again"
          )

          compile(call, resumes - 1)

        {:error, %Error{type: :worker_exited} = error} ->
          {:error,
           %{
             error
             | message:
                 "compile_program succeeded, but the worker exited before the compiled " <>
                   "program could be recorded, and it is gone with the worker (#{error.message})",
               details: %{"reason" => "not_recorded", "result" => result}
           }}

        {:error, _} = error ->
          error
      end
    end
  end

  # The worker to compile on: a clustered pool's session is on its owner,
  # which the pool's routing finds (maybe on another node), so none is named
  # unless the caller did; otherwise the worker the pool routes to now, so
  # the export that records the result reaches the same one.
  defp worker_index(pool, session, worker) do
    if session != nil and Cluster.clustered?(pool),
      do: worker,
      else: Pool.route(pool, session, worker)
  end

  defp worker_opt(%{index: nil}), do: []
  defp worker_opt(%{index: index}), do: [worker: index]

  defp remaining(:infinity), do: :infinity
  defp remaining(deadline), do: max(deadline - System.monotonic_time(:millisecond), 0)

  defp target(call, result),
    do: result["program_id"] || call.args["target_program_id"] || call.args["program_id"]

  # Exports the compiled program from the worker that compiled it and
  # records the document for replay (for the default session, imports it on
  # the other workers too). A session's document is recorded by the worker
  # that exported it, as its other records are (so a clustered pool's owner
  # records it and copies it to every pool node).
  # A session's compile is recorded by the worker that answers it, from the
  # document in its reply.
  defp recorded_by_compile(%{session: nil}), do: []

  defp recorded_by_compile(%{session: session} = call),
    do: [record: {:checkpoint, session, target(call, %{}), call.args["program_id"]}]

  defp record(%{session: session}, _result) when session != nil, do: :ok

  defp record(call, result) do
    target = target(call, result)
    export = %{"program_id" => target}
    opts = [worker: call.index, timeout: @record_timeout]

    with {:ok, %{"document" => doc}} <-
           Pool.request(call.pool, nil, "export_program", export, opts) do
      source = call.args["program_id"]
      here = adopt(call.pool, target, doc, source, [call.index])

      case Cluster.broadcast_nodes(call.pool) do
        :local ->
          here

        nodes ->
          mfa = {__MODULE__, :__adopt__, [call.pool, target, doc, source]}

          (nodes -- [node()])
          |> Remote.on_nodes(mfa, @record_timeout, "compile_program")
          |> Enum.reduce(here, &first_error/2)
      end
    end
  end

  @doc false
  # A clustered pool's other pool nodes: the default session's compiled
  # program recorded here and imported on every worker of this node.
  @spec __adopt__(atom(), String.t(), map(), String.t()) :: :ok | {:error, Error.t()}
  def __adopt__(pool, target, doc, source), do: adopt(pool, target, doc, source, [])

  defp first_error(_result, {:error, _} = error), do: error
  defp first_error({:error, _} = error, :ok), do: error
  defp first_error(_ok, :ok), do: :ok

  # The document recorded in this node's table, and imported on this node's
  # workers but those in `except` (the one that compiled it has it).
  defp adopt(pool, target, doc, source, except) do
    %{table: table, size: size} = Store.config(pool)
    {:ok, doc} = Store.checkpoint(table, nil, target, doc, source)
    spread(pool, target, doc, Enum.to_list(0..(size - 1)) -- except)
  end

  # The default session: these workers get the compiled program too (a
  # program it replaces is deleted first). A worker that dies meanwhile gets
  # it by replay, since it is recorded already.
  defp spread(pool, target, doc, indexes) do
    opts = [timeout: @record_timeout]

    indexes
    |> Enum.map(fn index ->
      Task.async(fn ->
        opts = Keyword.put(opts, :worker, index)
        id = %{"program_id" => target}

        with {:error, %Error{type: :not_found}} <-
               Pool.request(pool, nil, "delete_program", id, opts),
             do: :ok

        Pool.request(pool, nil, "import_program", Map.put(id, "document", doc), opts)
      end)
    end)
    |> Task.await_many(:infinity)
    |> Enum.find(:ok, fn
      {:ok, _} -> false
      {:error, %Error{type: :worker_exited}} -> false
      {:error, _} -> true
    end)
  end

  defp metric(name) when is_binary(name), do: name
  defp metric(name) when is_atom(name), do: Atom.to_string(name)
  defp metric(spec), do: Args.normalize(spec)

  defp checkpoint(id) when is_binary(id), do: %{"id" => id}
  defp checkpoint(spec), do: Args.normalize(spec)

  defp put_opt(map, _key, nil), do: map
  defp put_opt(map, key, value), do: Map.put(map, key, value)
end
