defmodule DSPyBridge.Worker.Admission do
  @moduledoc false
  # A caller's request on its way in, as :gen_statem results: sent at once
  # while the worker is ready and under :max_in_flight (or if it is a command
  # the worker answers at once), else queued up to :max_queue, or refused as
  # :overloaded (at once with `overflow: :error`); and how it ends without
  # an answer from the worker: its timeout runs out (queued: answered with
  # :timeout; in flight: answered, abandoned and cancelled in the worker),
  # or its caller fails while it waits (abandoned and cancelled likewise).
  # The request's telemetry (DSPyBridge.Telemetry) starts here.

  alias DSPyBridge.Error
  alias DSPyBridge.Worker.{Data, Effects, Outbound, Request, Requests, Spans}

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
    data = data |> Spans.request_start(req) |> Data.bump(:requests)

    cond do
      Requests.room?(data.requests, data.max_in_flight) or command in @unbounded ->
        {id, requests} = Requests.new_id(data.requests)
        {:keep_state, Outbound.dispatch(%{data | requests: requests}, id, req)}

      data.overflow == :error ->
        overloaded(data, req)

      true ->
        enqueue(data, req, :max_in_flight)
    end
  end

  @doc "A request to a worker not ready yet: it waits in the queue (up to its timeout)."
  @spec hold(Data.t(), GenServer.from(), Request.message(), reference() | nil) ::
          :gen_statem.event_handler_result(atom())
  def hold(data, from, msg, listener \\ nil) do
    req = Request.new(from, msg, listener)
    data |> Spans.request_start(req) |> Data.bump(:requests) |> enqueue(req, :not_ready)
  end

  defp enqueue(data, req, reason) do
    if data.requests.queued >= data.max_queue do
      overloaded(data, req)
    else
      {id, requests} = Requests.new_id(data.requests)
      req = Request.start_timer(req, id)
      data = %{data | requests: Requests.put(requests, id, {:queued, req})}
      {:keep_state, Spans.queue_start(data, req, reason)}
    end
  end

  defp overloaded(data, req) do
    %{in_flight: in_flight, queued: queued} = data.requests

    error =
      Error.new(
        :overloaded,
        "worker #{data.os_pid} has #{in_flight} requests in flight and #{queued} queued",
        details: %{"in_flight" => in_flight, "queued" => queued}
      )

    Spans.overloaded(data, req)
    Effects.answer(data, req, {:error, error})
    {:keep_state, Data.bump(data, :overloaded)}
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
        Spans.queue_stop(data, req, :timeout)
        Effects.answer(data, req, {:error, Request.timeout_error(req)})
        Data.bump(%{data | requests: requests}, :timeouts)

      {{:in_flight, req}, requests} ->
        Effects.answer(data, req, {:error, Request.timeout_error(req)})
        %{data | requests: requests} |> Data.bump(:timeouts) |> abandon(id, req, state)

      _ ->
        data
    end
  end

  @doc """
  `listen` (see `DSPyBridge.Worker.request/4`), made to tell the worker
  `server` when it raises, throws or exits in the calling process, before
  that goes on as it was: the worker then abandons the request (see
  `caller_failed/4`).
  """
  @spec abandon_on_failure((String.t(), map() -> term()), GenServer.server()) ::
          (String.t(), map() -> term())
  def abandon_on_failure(listen, server) do
    fn name, event ->
      try do
        listen.(name, event)
      catch
        kind, reason ->
          :gen_statem.cast(server, {:caller_failed, self(), {kind, reason, __STACKTRACE__}})
          :erlang.raise(kind, reason, __STACKTRACE__)
      end
    end
  end

  @doc """
  The `listen` function of the caller `pid` failed (`{kind, reason,
  stacktrace}`) in `state`: its request, if still in flight, is abandoned
  as after a timeout (its caller waits no more, so it gets no answer) and
  reported as a request `:exception`.
  """
  @spec caller_failed(Data.t(), pid(), {atom(), term(), list()}, atom()) :: Data.t()
  def caller_failed(data, pid, failure, state) do
    case listened_by(data.requests, pid) do
      nil ->
        # answered already: its :stop was reported
        data

      id ->
        {{:in_flight, req}, requests} = Requests.pop(data.requests, id)
        Effects.cancel_timer(req.timer)
        Effects.release(req.load)
        Spans.request_exception(data, req, failure)
        abandon(%{data | requests: requests}, id, req, state)
    end
  end

  # A caller waits for one listened request at a time: the in-flight one
  # whose answer goes to `pid` and whose events go to a listener.
  defp listened_by(requests, pid) do
    Enum.find_value(requests.entries, fn
      {id, {:in_flight, %Request{from: {^pid, _}, listener: listener}}} when listener != nil -> id
      _ -> nil
    end)
  end

  # An in-flight request nobody waits for any more: cancelled in the worker,
  # its late answer dropped; its slot is free at once.
  defp abandon(data, id, req, state) do
    requests = Requests.put(data.requests, id, {:abandoned, req.command})
    data = Outbound.send_cancel(%{data | requests: requests}, id)
    if state == :ready, do: Outbound.drain_queue(data), else: data
  end

  @doc """
  Every request still queued in `data` leaves the queue unsent, with
  `outcome` (for the queue's telemetry): called as they are all failed.
  """
  @spec unqueue_all(Data.t(), :worker_exited) :: Data.t()
  def unqueue_all(data, outcome) do
    for {_id, {:queued, req}} <- data.requests.entries,
        do: Spans.queue_stop(data, req, outcome)

    data
  end
end
