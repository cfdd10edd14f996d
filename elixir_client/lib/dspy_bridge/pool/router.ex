defmodule DSPyBridge.Pool.Router do
  @moduledoc false
  # The pool's routing strategy, without I/O: which worker a call goes to.
  # An explicit worker index first, else the session's worker
  # (`:erlang.phash2(session_id, size)`), else the least-loaded ready worker
  # (ties broken at random).

  @typedoc "A worker as the strategy sees it: `{index, ready?, load}`."
  @type candidate :: {non_neg_integer(), boolean(), integer()}

  @doc "The index of the worker serving `session_id` in a pool of `size` workers."
  @spec index_for(String.t(), pos_integer()) :: non_neg_integer()
  def index_for(session_id, size), do: :erlang.phash2(session_id, size)

  @doc """
  The worker for a call: `worker` (an index) if it is one, else the
  session's worker if `session` is not `nil`, else the least-loaded of
  `candidates.()` (a function, so the loads are only read when needed).
  """
  @spec route(term(), String.t() | nil, pos_integer(), (() -> [candidate()])) :: non_neg_integer()
  def route(worker, session, size, candidates) do
    cond do
      is_integer(worker) -> worker
      session != nil -> index_for(session, size)
      size == 1 -> 0
      true -> least_loaded(candidates.())
    end
  end

  @doc """
  The least-loaded candidate, ready ones first (a negative load counts as
  0); among equals one is picked at random.
  """
  @spec least_loaded([candidate(), ...]) :: non_neg_integer()
  def least_loaded(candidates) do
    keyed =
      for {index, ready?, load} <- candidates,
          do: {if(ready?, do: 0, else: 1), max(load, 0), index}

    {best_ready, best_load, _} = Enum.min(keyed)

    keyed
    |> Enum.filter(fn {r, l, _} -> r == best_ready and l == best_load end)
    |> Enum.random()
    |> elem(2)
  end
end
