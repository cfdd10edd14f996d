defmodule DSPyBridge.Worker.Requests do
  @moduledoc false
  # A worker's requests, without I/O: one map keyed by wire id whose entry
  # is tagged with the request's phase (like NimblePool's `requests` map),
  # plus the FIFO of queued ids and the two counts the in-flight bound and
  # `info/1` need.
  #
  #   {:queued, req}       accepted, waiting for room under :max_in_flight
  #   {:in_flight, req}    sent; its caller waits for the response
  #   {:abandoned, cmd}    timed out on the client, still running in the worker
  #   {:internal, tag}     the client's own command (:replay, :cancel, :shutdown)
  #
  # A wire id is given when the request is accepted, so a queued request
  # keeps its id when it is sent. The queue is cleaned lazily: an id whose
  # entry left the :queued phase (it timed out) is skipped when dequeued.

  defstruct entries: %{}, queue: :queue.new(), next_id: 0, in_flight: 0, queued: 0

  @type id :: non_neg_integer()
  @type entry ::
          {:queued, map()} | {:in_flight, map()} | {:abandoned, String.t()} | {:internal, atom()}
  @type t :: %__MODULE__{
          entries: %{optional(id()) => entry()},
          queue: :queue.queue(id()),
          next_id: id(),
          in_flight: non_neg_integer(),
          queued: non_neg_integer()
        }

  @spec new() :: t()
  def new, do: %__MODULE__{}

  @doc "A fresh wire id."
  @spec new_id(t()) :: {id(), t()}
  def new_id(%__MODULE__{next_id: id} = t), do: {id, %{t | next_id: id + 1}}

  @doc "Adds `entry` under `id` (a `{:queued, req}` also joins the queue)."
  @spec put(t(), id(), entry()) :: t()
  def put(t, id, {:queued, _} = entry),
    do: %{
      t
      | entries: Map.put(t.entries, id, entry),
        queue: :queue.in(id, t.queue),
        queued: t.queued + 1
    }

  def put(t, id, {:in_flight, _} = entry),
    do: %{t | entries: Map.put(t.entries, id, entry), in_flight: t.in_flight + 1}

  def put(t, id, entry), do: %{t | entries: Map.put(t.entries, id, entry)}

  @doc "Removes the entry of `id`: `{entry | nil, t}`."
  @spec pop(t(), id()) :: {entry() | nil, t()}
  def pop(t, id) do
    case Map.pop(t.entries, id) do
      {nil, _} -> {nil, t}
      {entry, entries} -> {entry, uncount(%{t | entries: entries}, entry)}
    end
  end

  defp uncount(t, {:queued, _}), do: %{t | queued: t.queued - 1}
  defp uncount(t, {:in_flight, _}), do: %{t | in_flight: t.in_flight - 1}
  defp uncount(t, _), do: t

  @doc "The oldest queued request, out of the table: `{:ok, id, req, t}` or `:empty`."
  @spec dequeue(t()) :: {:ok, id(), map(), t()} | :empty
  def dequeue(t) do
    case :queue.out(t.queue) do
      {:empty, _} ->
        :empty

      {{:value, id}, queue} ->
        t = %{t | queue: queue}

        case pop(t, id) do
          {{:queued, req}, t} -> {:ok, id, req, t}
          # timed out while queued (already answered and counted)
          {_, _} -> dequeue(t)
        end
    end
  end

  @doc """
  The listener of in-flight request `id` (the alias its caller receives its
  events on), or `nil`: none, or the request is not in flight (queued
  requests have sent nothing; an abandoned one's caller is gone).
  """
  @spec listener(t(), term()) :: reference() | nil
  def listener(t, id) do
    case Map.get(t.entries, id) do
      {:in_flight, %{listener: listener}} -> listener
      _ -> nil
    end
  end

  @doc "Whether another request may be sent under a bound of `max` in flight."
  @spec room?(t(), pos_integer()) :: boolean()
  def room?(t, max), do: t.in_flight < max

  @doc "Queued and in-flight requests (their callers wait), and the table without them."
  @spec take_callers(t()) :: {[map()], t()}
  def take_callers(t) do
    {callers, rest} =
      Enum.split_with(t.entries, fn {_, entry} -> elem(entry, 0) in [:queued, :in_flight] end)

    {for({_, {_, req}} <- callers, do: req),
     %{t | entries: Map.new(rest), queue: :queue.new(), in_flight: 0, queued: 0}}
  end
end
