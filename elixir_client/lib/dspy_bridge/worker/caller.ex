defmodule DSPyBridge.Worker.Caller do
  @moduledoc false
  # The caller's side of a worker request (`request/4`), run in the calling
  # process: a plain call, or a call whose worker events (`progress`,
  # `stream`, `stream_status` for that request) are handed to a function of
  # the caller while it waits. The timeout, the worker's death and a worker
  # that is not running become errors (`:noproc` ones, never delivered, are
  # safe to send again).

  alias DSPyBridge.Error
  alias DSPyBridge.Worker.Effects

  @doc "A `GenServer.call/3` of `msg`, its exits as errors."
  @spec call(GenServer.server(), tuple(), timeout(), timeout(), term()) ::
          {:ok, term()} | {:error, Error.t()}
  def call(server, msg, timeout, call_timeout, load) do
    GenServer.call(server, msg, call_timeout)
  catch
    :exit, {:timeout, _} ->
      {:error, Error.new(:timeout, "worker did not answer in #{timeout} ms")}

    :exit, {:noproc, _} ->
      # never delivered: safe for the pool to retry on a restarted worker
      Effects.release(load)
      {:error, noproc()}

    :exit, {reason, _} ->
      {:error, Error.new(:worker_exited, "worker not available: #{inspect(reason)}")}
  end

  # A call whose worker events reach the caller while it waits: the request
  # is cast with a `from` of the caller's own, `{self(), ref}`, `ref` being a
  # monitor of the worker process that is also an alias. The worker sends
  # the request's events to the alias and its answer to the caller, so they
  # come in the order the worker sent them, events first; once the caller
  # stops waiting (answered, timed out, or `listen` raised) the alias is
  # gone and whatever the worker still sends for it is dropped.
  @doc """
  Sends `msg` so that the worker's events for it are given to `listen`
  (a function of the event's name and map) in this process while it waits
  for the answer.
  """
  @spec listened(
          GenServer.server(),
          tuple(),
          timeout(),
          timeout(),
          term(),
          (String.t(), map() -> term())
        ) ::
          {:ok, term()} | {:error, Error.t()}
  def listened(server, msg, timeout, call_timeout, load, listen) do
    case GenServer.whereis(server) do
      pid when is_pid(pid) ->
        ref = :erlang.monitor(:process, pid, [{:alias, :demonitor}])
        :gen_statem.cast(pid, {:listened, {self(), ref}, ref, msg})
        deadline = if call_timeout == :infinity, do: :infinity, else: now() + call_timeout

        try do
          await_listened(ref, listen, deadline, timeout, load)
        after
          Process.demonitor(ref, [:flush])
        end

      _ ->
        Effects.release(load)
        {:error, noproc()}
    end
  end

  defp await_listened(ref, listen, deadline, timeout, load) do
    wait = if deadline == :infinity, do: :infinity, else: max(deadline - now(), 0)

    receive do
      {^ref, name, event} ->
        listen.(name, event)
        await_listened(ref, listen, deadline, timeout, load)

      {^ref, reply} ->
        reply

      {:DOWN, ^ref, :process, _, :noproc} ->
        # never delivered: safe for the pool to retry on a restarted worker
        Effects.release(load)
        {:error, noproc()}

      {:DOWN, ^ref, :process, _, reason} ->
        {:error, Error.new(:worker_exited, "worker not available: #{inspect(reason)}")}
    after
      wait -> {:error, Error.new(:timeout, "worker did not answer in #{timeout} ms")}
    end
  end

  defp noproc,
    do: Error.new(:worker_exited, "worker not running", details: %{"reason" => "noproc"})

  defp now, do: System.monotonic_time(:millisecond)
end
