defmodule DSPyBridge.Worker.Replay do
  @moduledoc false
  # The replay into a (re)started worker, without I/O: batches of
  # `{command, args}` sent one batch after another. Within a batch commands
  # are sent concurrently, but at most @window at a time so a big replay
  # stays under the worker's --max-in-flight. The worker process sends what
  # `next/1` hands it, tells `sent/3` (or `not_sent/1`) for each command and
  # `answered/3` for each response, and asks `next/1` again; `summary/2`
  # says what was replayed once `next/1` answers `:done`.

  @window 64

  defstruct batches: [], pending: %{}, failed: 0, commands: 0, started: 0

  @type command :: {String.t(), map()}
  @type t :: %__MODULE__{
          batches: [[command()]],
          pending: %{optional(term()) => String.t()},
          failed: non_neg_integer(),
          commands: non_neg_integer(),
          started: integer()
        }

  @doc "A replay of `init_commands` then `batches`, started at `now` (ms)."
  @spec new([command()], [[command()]], integer()) :: t()
  def new(init_commands, batches, now) do
    batches =
      [init_commands | batches]
      |> Enum.reject(&(&1 == []))
      |> Enum.flat_map(&Enum.chunk_every(&1, @window))

    %__MODULE__{
      batches: batches,
      commands: Enum.reduce(batches, 0, &(length(&1) + &2)),
      started: now
    }
  end

  @doc """
  What to do next: `{:send, batch, replay}` (the next batch, once nothing is
  pending), `:wait` (answers are pending) or `:done`.
  """
  @spec next(t()) :: {:send, [command()], t()} | :wait | :done
  def next(%__MODULE__{pending: pending}) when map_size(pending) > 0, do: :wait
  def next(%__MODULE__{batches: []}), do: :done

  def next(%__MODULE__{batches: [batch | rest]} = replay),
    do: {:send, batch, %{replay | batches: rest}}

  @doc "`command` was sent under `key` (its wire id)."
  @spec sent(t(), term(), String.t()) :: t()
  def sent(replay, key, command), do: %{replay | pending: Map.put(replay.pending, key, command)}

  @doc "A command could not be sent: it counts as failed."
  @spec not_sent(t()) :: t()
  def not_sent(replay), do: %{replay | failed: replay.failed + 1}

  @doc """
  The response to the command sent under `key`: `{:ok, replay}`, or
  `{{:failed, command, error}, replay}` when it did not succeed.
  """
  @spec answered(t(), term(), map()) :: {:ok | {:failed, String.t(), term()}, t()}
  def answered(replay, key, response) do
    {command, pending} = Map.pop(replay.pending, key, "?")
    replay = %{replay | pending: pending}

    case response do
      %{"success" => true} ->
        {:ok, replay}

      other ->
        {{:failed, command, Map.get(other, "error", other)},
         %{replay | failed: replay.failed + 1}}
    end
  end

  @doc "Whether `key` names a command of this replay that awaits its answer."
  @spec pending?(t() | nil, term()) :: boolean()
  def pending?(%__MODULE__{pending: pending}, key), do: is_map_key(pending, key)
  def pending?(nil, _key), do: false

  @doc "The `replayed` event's data at `now` (ms)."
  @spec summary(t(), integer()) :: map()
  def summary(replay, now) do
    %{
      "commands" => replay.commands,
      "failed" => replay.failed,
      "duration_ms" => now - replay.started
    }
  end
end
