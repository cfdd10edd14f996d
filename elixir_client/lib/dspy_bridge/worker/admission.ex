defmodule DSPyBridge.Worker.Admission do
  @moduledoc false
  # A caller's request on its way in, as :gen_statem results: sent at once
  # while the worker is ready and under :max_in_flight (or if it is a command
  # the worker answers at once), else queued up to :max_queue, or refused as
  # :overloaded (at once with `overflow: :error`); and what happens when its
  # timeout runs out before its answer (queued: answered with :timeout; in
  # flight: answered, abandoned and cancelled in the worker).

  alias DSPyBridge.Error
  alias DSPyBridge.Worker.{Data, Effects, Outbound, Request, Requests}

  # answered at once by the worker, so never held back by the in-flight bound
  @unbounded ["ping", "get_stats", "cancel", "shutdown", "callback_reply"]

  @doc """
  A request to a ready worker: sent, queued or refused (`listener`: where
  its events go, see `DSPyBridge.Worker.Request.new/3`).
  """
  @spec admit(Data.t(), GenServer.from(), Request.message(), reference() | nil) ::
          :gen_statem.event_handler_result(atom())
  def admit(data, from, {:request, command, _, _, _, _} = msg, listener \\ nil) do
    req = Request.new(from, msg, listener)
    data = Data.bump(data, :requests)

    cond do
      Requests.room?(data.requests, data.max_in_flight) or command in @unbounded ->
        {id, requests} = Requests.new_id(data.requests)
        {:keep_state, Outbound.dispatch(%{data | requests: requests}, id, req)}

      data.overflow == :error ->
        overloaded(data, req)

      true ->
        enqueue(data, req)
    end
  end

  @doc "A request to a worker not ready yet: it waits in the queue (up to its timeout)."
  @spec hold(Data.t(), GenServer.from(), Request.message(), reference() | nil) ::
          :gen_statem.event_handler_result(atom())
  def hold(data, from, msg, listener \\ nil),
    do: enqueue(Data.bump(data, :requests), Request.new(from, msg, listener))

  defp enqueue(data, req) do
    if data.requests.queued >= data.max_queue do
      overloaded(data, req)
    else
      {id, requests} = Requests.new_id(data.requests)
      req = Request.start_timer(req, id)
      {:keep_state, %{data | requests: Requests.put(requests, id, {:queued, req})}}
    end
  end

  defp overloaded(data, req) do
    Effects.release(req.load)
    %{in_flight: in_flight, queued: queued} = data.requests

    error =
      Error.new(
        :overloaded,
        "worker #{data.os_pid} has #{in_flight} requests in flight and #{queued} queued",
        details: %{"in_flight" => in_flight, "queued" => queued}
      )

    {:keep_state, Data.bump(data, :overloaded), [{:reply, req.from, {:error, error}}]}
  end

  @doc """
  The timeout of request `id` ran out in `state`. An in-flight request is
  cancelled in the worker and its late answer dropped; its slot is free at
  once (so a ready worker sends what is queued).
  """
  @spec timed_out(Data.t(), Requests.id(), atom()) :: Data.t()
  def timed_out(data, id, state) do
    case Requests.pop(data.requests, id) do
      {{:queued, req}, requests} ->
        # still queued: lazily skipped when dequeued
        Effects.reply(req, {:error, Request.timeout_error(req)})
        Data.bump(%{data | requests: requests}, :timeouts)

      {{:in_flight, req}, requests} ->
        Effects.reply(req, {:error, Request.timeout_error(req)})
        requests = Requests.put(requests, id, {:abandoned, req.command})
        data = %{data | requests: requests} |> Data.bump(:timeouts) |> Outbound.send_cancel(id)
        if state == :ready, do: Outbound.drain_queue(data), else: data

      _ ->
        data
    end
  end
end
