defmodule DSPyBridge.Worker.Outbound do
  @moduledoc false
  # Frames to the worker: callers' requests (sent at once, or from the queue
  # as room is made under :max_in_flight), each checked against the worker's
  # limits before it is written, and the client's own commands (init
  # commands, replay, cancel, shutdown). `data` is a DSPyBridge.Worker.Data.

  require Logger

  alias DSPyBridge.{MsgPack, Protocol}
  alias DSPyBridge.Worker.{Data, Effects, Request, Requests, Spans}

  @doc """
  Sends request `req` under wire `id` (its timer started when it was
  accepted, if it was queued). A request over the worker's limits is not
  sent: its caller gets the `:limit_exceeded` error at once.
  """
  @spec dispatch(Data.t(), Requests.id(), Request.t()) :: Data.t()
  def dispatch(data, id, req) do
    req = Request.start_timer(req, id)
    timeout_ms = Request.timeout_ms(req, data.margin)

    case Protocol.encode_request(data.limits, id, req.command, {req.args, req.shape}, timeout_ms) do
      {:ok, frame} ->
        # If the OS process just died the port may be closed already; the
        # request then stays pending and fails with :worker_exited on the
        # exit status.
        Effects.send_frame(data.port, frame)
        %{data | requests: Requests.put(data.requests, id, {:in_flight, req})}

      {:error, error} ->
        # The worker would answer `invalid_frame` with no id (it cannot read
        # the frame), which no caller could be matched with: refuse it here.
        Effects.cancel_timer(req.timer)
        Effects.answer(data, req, {:error, error})
        Data.bump(data, :limit_exceeded)
    end
  end

  @doc "Sends queued requests, oldest first, while there is room under `:max_in_flight`."
  @spec drain_queue(Data.t()) :: Data.t()
  def drain_queue(data) do
    if Requests.room?(data.requests, data.max_in_flight) do
      case Requests.dequeue(data.requests) do
        {:ok, id, req, requests} ->
          Spans.queue_stop(data, req, :sent)
          drain_queue(dispatch(%{data | requests: requests}, id, req))

        :empty ->
          data
      end
    else
      data
    end
  end

  @doc """
  Sends a command of the client's own, its answer awaited under `tag` in the
  request table: `{:ok, id, data}`, or `{:error, data}` (logged) for one
  that could not be sent.
  """
  @spec send_command(Data.t(), String.t(), map(), atom()) ::
          {:ok, Requests.id(), Data.t()} | {:error, Data.t()}
  def send_command(data, command, args, tag) do
    encoded = {MsgPack.encode!(args), Protocol.shape(args)}

    case send_encoded(data, command, encoded, tag) do
      {:ok, id, data} ->
        {:ok, id, data}

      {:error, error, data} ->
        Logger.error("dspy_bridge worker #{data.os_pid}: #{command} not sent: #{error.message}")
        {:error, data}
    end
  rescue
    ArgumentError -> {:error, data}
  end

  @doc """
  Like `send_command/4` with args already encoded (`{args_bin, shape}`, as
  `DSPyBridge.Protocol.encode_args/1` makes them, e.g. in a host function's
  task): `{:ok, id, data}`, or `{:error, %DSPyBridge.Error{type:
  :limit_exceeded}, data}` when the frame is over the worker's limits (not
  sent, not logged).
  """
  @spec send_encoded(Data.t(), String.t(), {binary(), Protocol.shape()}, atom()) ::
          {:ok, Requests.id(), Data.t()} | {:error, DSPyBridge.Error.t(), Data.t()}
  def send_encoded(data, command, encoded, tag) do
    {id, requests} = Requests.new_id(data.requests)

    case Protocol.encode_request(data.limits, id, command, encoded, nil) do
      {:ok, frame} ->
        Effects.send_frame(data.port, frame)
        {:ok, id, %{data | requests: Requests.put(requests, id, {:internal, tag})}}

      {:error, error} ->
        {:error, error, data}
    end
  end

  @doc "Asks the worker to shut down within `:shutdown_grace`."
  @spec send_shutdown(Data.t()) :: Data.t()
  def send_shutdown(data),
    do: data |> send_command("shutdown", %{"grace_ms" => data.grace}, :shutdown) |> sent()

  @doc "Asks the worker to cancel request `id`, and counts it."
  @spec send_cancel(Data.t(), Requests.id()) :: Data.t()
  def send_cancel(data, id) do
    data
    |> send_command("cancel", %{"request_id" => id}, :cancel)
    |> sent()
    |> Data.bump(:cancels_sent)
  end

  defp sent({:ok, _id, data}), do: data
  defp sent({:error, data}), do: data
end
