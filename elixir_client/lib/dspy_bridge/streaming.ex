defmodule DSPyBridge.Streaming do
  @moduledoc false
  # The worker's events for one request, as the public API hands them out:
  # the `listen` functions given to the pool's requests (see the worker's
  # `request/4`), which turn `stream` / `stream_status` events into
  # `{:chunk, field, text}` / `{:status, message}` items and pass `progress`
  # maps on, and the Elixir `Stream` of a streamed call.
  #
  # A stream's request runs in a task started by the process that
  # enumerates the stream: the task makes the call, sends each item to that
  # process as it comes, and its result last (all from the one task, so in
  # that order). Halting the stream early kills the task; the worker then
  # finishes the answer on its own (within the call's timeout) and its
  # events and reply are dropped.

  alias DSPyBridge.Error

  @typedoc "An item of a streamed call."
  @type item :: {:chunk, String.t(), String.t()} | {:status, String.t()}

  @doc "A `listen` function passing `progress` maps to `fun` (`nil`: none)."
  @spec progress_listener((map() -> term()) | nil) :: (String.t(), map() -> term()) | nil
  def progress_listener(nil), do: nil

  def progress_listener(fun) when is_function(fun, 1) do
    fn
      "progress", event -> fun.(event)
      _name, _event -> :ok
    end
  end

  @doc """
  A `listen` function passing each chunk and status message to `fun` (`nil`:
  none) as an `t:item/0`; empty chunks (a field's closing one) are left out.
  """
  @spec chunk_listener((item() -> term()) | nil) :: (String.t(), map() -> term()) | nil
  def chunk_listener(nil), do: nil

  def chunk_listener(fun) when is_function(fun, 1) do
    fn name, event ->
      case item(name, event) do
        nil -> :ok
        item -> fun.(item)
      end
    end
  end

  @doc "The item of a worker event, or `nil` for an event that makes none."
  @spec item(String.t(), map()) :: item() | nil
  def item("stream", %{"field" => field, "chunk" => chunk})
      when is_binary(field) and is_binary(chunk) and chunk != "",
      do: {:chunk, field, chunk}

  def item("stream_status", %{"message" => message}) when is_binary(message),
    do: {:status, message}

  def item(_name, _event), do: nil

  @doc """
  The stream of a call: `call` is run in a task with a function to give
  each `t:item/0` to, and returns the call's `{:ok, result}` or
  `{:error, error}`. The stream yields the items as they come, then
  `{:done, result}` or `{:error, error}`, and ends.
  """
  @spec stream(((item() -> term()) -> {:ok, map()} | {:error, Error.t()})) :: Enumerable.t()
  def stream(call) when is_function(call, 1) do
    Stream.resource(fn -> start(call) end, &next/1, &stop/1)
  end

  defp start(call) do
    me = self()
    tag = make_ref()
    task = Task.async(fn -> call.(fn item -> send(me, {tag, item}) end) end)
    {:running, task, tag}
  end

  defp next({:done, _task, _tag} = acc), do: {:halt, acc}

  defp next({:running, %Task{ref: ref} = task, tag}) do
    receive do
      {^tag, item} ->
        {[item], {:running, task, tag}}

      {^ref, result} ->
        Process.demonitor(ref, [:flush])

        last =
          case result do
            {:ok, result} -> {:done, result}
            {:error, %Error{} = error} -> {:error, error}
          end

        {[last], {:done, task, tag}}

      {:DOWN, ^ref, :process, _, reason} ->
        error =
          Error.new(:internal, "the streamed call's process exited: #{inspect(reason)}",
            retryable: false
          )

        {[{:error, error}], {:done, task, tag}}
    end
  end

  defp stop({:running, task, tag}) do
    Task.shutdown(task, :brutal_kill)
    flush(tag)
  end

  defp stop({:done, _task, tag}), do: flush(tag)

  defp flush(tag) do
    receive do
      {^tag, _} -> flush(tag)
    after
      0 -> :ok
    end
  end
end
