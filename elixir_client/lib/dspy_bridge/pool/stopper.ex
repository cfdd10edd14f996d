defmodule DSPyBridge.Pool.Stopper do
  @moduledoc false
  # The pool's last child, so the first one terminated when the pool stops:
  # it asks every worker to shut its OS process down at once, so the
  # workers, terminated one by one afterwards, drain concurrently.

  use GenServer

  alias DSPyBridge.Pool.Store

  def start_link(table, size), do: GenServer.start_link(__MODULE__, {table, size})

  @impl true
  def init(state) do
    Process.flag(:trap_exit, true)
    {:ok, state}
  end

  @impl true
  def terminate(_reason, {table, size}) do
    for index <- 0..(size - 1) do
      case Store.worker(table, index) do
        {pid, _, _} -> DSPyBridge.Worker.prepare_stop(pid)
        nil -> :ok
      end
    end

    :ok
  end
end
