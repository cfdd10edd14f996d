defmodule DSPyBridge.Cluster.Reads do
  @moduledoc false
  # The reads of a whole pool — `list_sessions/2`, `get_usage/2` without a
  # session, `stats/2` — on a clustered pool: one logical pool, so every
  # pool node is asked for its own part (the caller's `*_here` functions, on
  # that node's own workers) and the parts are combined, from any
  # node, one with no pool of its own included. A pool that is not
  # clustered answers from its workers, as before.

  alias DSPyBridge.Cluster
  alias DSPyBridge.Cluster.Remote
  alias DSPyBridge.Pool.Store

  @doc """
  `module.function(args...)` here for a pool that is not clustered; for a
  clustered one on every pool node at once, `combine` given
  `[{node, result}]`, or the first error. Raises `ArgumentError` when no
  node runs the pool.
  """
  @spec on_pool_nodes(
          atom(),
          {module(), atom(), list()},
          timeout(),
          ([{node(), term()}] -> term())
        ) ::
          term()
  def on_pool_nodes(pool, {module, function, args} = mfa, timeout, combine) do
    if Cluster.clustered?(pool) do
      case Cluster.nodes(pool) do
        # as for a pool that is not running: ArgumentError naming it
        [] -> Store.config(pool)
        nodes -> nodes |> on_nodes(mfa, timeout) |> combined(combine)
      end
    else
      apply(module, function, args)
    end
  end

  @doc """
  `module.function(args...)` on the node of the worker that owns `session`
  (for a clustered pool), `worker: index` added to the options (the last
  argument); `combine` given `[{node, result}]`. A pool that is not
  clustered: here, as given.
  """
  @spec on_owner(atom(), String.t(), {module(), atom(), list()}, timeout(), function()) :: term()
  def on_owner(pool, session, {module, function, args}, timeout, combine) do
    if Cluster.clustered?(pool) do
      case Cluster.whereis(pool, session) do
        nil ->
          Store.config(pool)

        {node, index} ->
          {opts, args} = List.pop_at(args, -1)
          mfa = {module, function, args ++ [Keyword.put(opts, :worker, index)]}
          [node] |> on_nodes(mfa, timeout) |> combined(combine)
      end
    else
      apply(module, function, args)
    end
  end

  @doc "`list_sessions/2`'s parts combined: every node's list, each entry with its `\"node\"`."
  @spec sessions([{node(), map()}]) :: {:ok, map()}
  def sessions(parts) do
    sessions =
      for {node, %{"sessions" => list}} <- parts,
          session <- list,
          do: Map.put(session, "node", Atom.to_string(node))

    {:ok, %{"sessions" => sessions}}
  end

  @doc """
  `stats/2`'s parts combined: `size` is every node's workers, `workers`
  each with its `:node`, `nodes` the nodes that answered; the record
  counts are the largest any node has (every pool node holds every
  record, so they are the pool's, but for copies still on their way).
  """
  @spec stats(atom(), [{node(), map()}]) :: {:ok, map()}
  def stats(pool, parts) do
    counts =
      for key <- [:sessions, :programs, :tools],
          into: %{},
          do: {key, parts |> Enum.map(fn {_, part} -> part[key] end) |> Enum.max()}

    {:ok,
     Map.merge(counts, %{
       pool: pool,
       size: parts |> Enum.map(fn {_, part} -> part.size end) |> Enum.sum(),
       nodes: Enum.map(parts, &elem(&1, 0)),
       workers:
         for({node, part} <- parts, worker <- part.workers, do: Map.put(worker, :node, node))
     })}
  end

  defp on_nodes(nodes, {_module, function, _args} = mfa, timeout),
    do: Enum.zip(nodes, Remote.on_nodes(nodes, mfa, timeout, Atom.to_string(function)))

  defp combined(results, combine) do
    case Enum.find(results, &match?({_node, {:error, _}}, &1)) do
      nil -> combine.(for {node, {:ok, result}} <- results, do: {node, result})
      {_node, error} -> error
    end
  end
end
