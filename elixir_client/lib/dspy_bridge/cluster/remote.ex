defmodule DSPyBridge.Cluster.Remote do
  @moduledoc false
  # Calls to another node of a clustered pool, by :erpc, bounded by the
  # call's own timeout, with distribution failures made client errors.

  alias DSPyBridge.Error

  # A call's arguments bigger than this (the worker's default max_frame_bytes,
  # 64 MiB) are refused before they cross the network: the owner's worker
  # would refuse them anyway, after they had held the connection between the
  # two nodes for size / bandwidth (see docs/cluster.md).
  @max_remote_bytes 64 * 1024 * 1024

  @doc false
  # `module.function(pool, session, command, args, opts)` (DSPyBridge.Pool's
  # request or broadcast) on `node`, within `opts[:timeout]`.
  @spec call(node(), {module(), atom()}, list()) :: {:ok, term()} | {:error, Error.t()}
  def call(node, {module, function}, args) do
    {command, timeout} = command_and_timeout(args)
    remote_call(node, {module, function, args}, timeout, command)
  end

  @doc false
  # `call/3` on every node at once: the results in the order of `nodes`.
  @spec multicall([node()], {module(), atom()}, list()) :: [{:ok, term()} | {:error, Error.t()}]
  def multicall(nodes, {module, function}, args) do
    {command, timeout} = command_and_timeout(args)
    on_nodes(nodes, {module, function, args}, timeout, command)
  end

  @doc false
  # `remote_call/4` on every node at once: the results in the order of `nodes`.
  @spec on_nodes([node()], {module(), atom(), list()}, timeout(), String.t()) ::
          [{:ok, term()} | {:error, Error.t()}]
  def on_nodes(nodes, mfa, timeout, command) do
    nodes
    |> Enum.map(fn node -> Task.async(fn -> remote_call(node, mfa, timeout, command) end) end)
    |> Task.await_many(:infinity)
  end

  # a request's or a broadcast's arguments: its command and timeout
  defp command_and_timeout([_pool, _session, command, _args, opts]),
    do: {command, Keyword.get(opts, :timeout, 30_000)}

  defp command_and_timeout([_pool, command, _args, opts]),
    do: {command, Keyword.get(opts, :timeout, 30_000)}

  @doc false
  # Calls `module.function(args)` on `node` within the call's `timeout` (one
  # second more, so the remote side answers its own timeout first), mapping
  # distribution failures to client errors: a node that is or goes down is a
  # retryable `:worker_exited` (`details["reason"] == "node_down"`), never a hang.
  @spec remote_call(node(), {module(), atom(), list()}, timeout(), String.t()) ::
          {:ok, term()} | {:error, Error.t()}
  def remote_call(node, {module, function, args}, timeout, command) do
    erpc_timeout = if timeout == :infinity, do: :infinity, else: timeout + 1_000
    size = :erlang.external_size(args)

    if size > @max_remote_bytes do
      {:error,
       Error.new(
         :limit_exceeded,
         "#{command}: #{size} bytes is over #{@max_remote_bytes} for #{node}",
         details: %{
           "limit" => "max_remote_bytes",
           "max_remote_bytes" => @max_remote_bytes,
           "size" => size
         },
         retryable: false
       )}
    else
      erpc(node, {module, function, args}, erpc_timeout, command)
    end
  end

  defp erpc(node, {module, function, args}, erpc_timeout, command) do
    try do
      :erpc.call(node, module, function, args, erpc_timeout)
    catch
      :error, {:erpc, :noconnection} ->
        {:error, node_down(node, command)}

      :error, {:erpc, :timeout} ->
        {:error, Error.new(:timeout, "#{command}: no answer from #{node} in time")}

      :error, {:exception, %ArgumentError{message: "no DSPyBridge.Pool" <> _}, _} ->
        {:error,
         Error.new(:worker_exited, "#{command}: the pool on #{node} is gone",
           details: %{"reason" => "node_down", "node" => Atom.to_string(node)}
         )}

      kind, reason ->
        {:error,
         Error.new(:internal, "#{command} on #{node} failed: #{inspect({kind, reason})}",
           details: %{"node" => Atom.to_string(node)}
         )}
    end
  end

  defp node_down(node, command) do
    Error.new(:worker_exited, "#{command}: node #{node} is down or unreachable",
      details: %{"reason" => "node_down", "node" => Atom.to_string(node)}
    )
  end
end
