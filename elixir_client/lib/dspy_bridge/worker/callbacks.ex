defmodule DSPyBridge.Worker.Callbacks do
  @moduledoc false
  # The host function calls a worker process has running, without I/O: one
  # entry per outstanding `callback`, found by its task's monitor ref (the
  # task's answer, its `:DOWN`, its deadline timer) or by its `callback_id`
  # (a `callback_abandoned` event). An entry leaves the table exactly once,
  # whichever comes first.

  defstruct by_ref: %{}, by_id: %{}

  @typedoc "One outstanding callback."
  @type entry :: %{
          required(:id) => String.t(),
          required(:ref) => reference(),
          required(:pid) => pid(),
          required(:function) => String.t(),
          required(:purpose) => String.t() | nil,
          required(:session_id) => String.t() | nil,
          required(:request_id) => term(),
          required(:timeout_ms) => pos_integer(),
          required(:timer) => reference() | nil,
          required(:started) => integer()
        }

  @type t :: %__MODULE__{
          by_ref: %{optional(reference()) => entry()},
          by_id: %{optional(String.t()) => reference()}
        }

  @spec new() :: t()
  def new, do: %__MODULE__{}

  @doc "Adds `entry` (a callback id already present is replaced)."
  @spec put(t(), entry()) :: t()
  def put(t, %{id: id, ref: ref} = entry) do
    {_, t} = pop_id(t, id)
    %{t | by_ref: Map.put(t.by_ref, ref, entry), by_id: Map.put(t.by_id, id, ref)}
  end

  @doc "Removes the entry of task monitor `ref`: `{entry | nil, t}`."
  @spec pop_ref(t(), reference()) :: {entry() | nil, t()}
  def pop_ref(t, ref) do
    case Map.pop(t.by_ref, ref) do
      {nil, _} -> {nil, t}
      {entry, by_ref} -> {entry, %{t | by_ref: by_ref, by_id: Map.delete(t.by_id, entry.id)}}
    end
  end

  @doc "Removes the entry of `callback_id`: `{entry | nil, t}`."
  @spec pop_id(t(), String.t()) :: {entry() | nil, t()}
  def pop_id(t, callback_id) do
    case Map.fetch(t.by_id, callback_id) do
      {:ok, ref} -> pop_ref(t, ref)
      :error -> {nil, t}
    end
  end

  @doc "Every outstanding entry, and the empty table."
  @spec take_all(t()) :: {[entry()], t()}
  def take_all(t), do: {Map.values(t.by_ref), new()}

  @doc "How many callbacks are outstanding."
  @spec size(t()) :: non_neg_integer()
  def size(t), do: map_size(t.by_ref)
end
