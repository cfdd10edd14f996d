defmodule DSPyBridge.Worker.Data do
  @moduledoc false
  # The state data of DSPyBridge.Worker and what it does to it, whatever the
  # state: accepting, sending, answering and timing out requests (in the
  # single request map of DSPyBridge.Worker.Requests), the client's own
  # commands, and the counters of `DSPyBridge.Worker.info/1`.

  require Logger

  alias DSPyBridge.{Error, MsgPack, Protocol}
  alias DSPyBridge.Worker.{Effects, Replay, Requests}

  @counters [
    :requests,
    :timeouts,
    :cancels_sent,
    :late_replies_dropped,
    :overloaded,
    :limit_exceeded,
    :unexpected_frames
  ]

  def new(opts, port, os_pid) do
    %{
      port: port,
      os_pid: os_pid,
      pool: Keyword.get(opts, :pool),
      on_event: Keyword.get(opts, :on_event),
      init_commands: Keyword.get(opts, :init_commands, []),
      replay_fun: Keyword.get(opts, :replay),
      max_in_flight: Keyword.get(opts, :max_in_flight, 200),
      max_queue: Keyword.get(opts, :max_queue, 10_000),
      overflow: Keyword.get(opts, :overflow, :queue),
      margin: Keyword.get(opts, :worker_timeout_margin, 1_000),
      grace: Keyword.get(opts, :shutdown_grace, 2_000),
      kill_after: Keyword.get(opts, :kill_after, 2_000),
      limits: Protocol.default_limits(),
      requests: Requests.new(),
      replay: nil,
      ready: nil,
      ready_waiters: [],
      exited: false,
      started_at: System.monotonic_time(:millisecond),
      counters: Map.new(@counters, &{&1, 0})
    }
  end

  # The response to wire id `id`: `{data, :replay_answered | :ok}`.
  def handle_response(data, id, response) do
    case Requests.pop(data.requests, id) do
      {{:in_flight, req}, requests} ->
        Effects.cancel_timer(req.timer)
        reply = Protocol.to_reply(response)

        if req.record != nil and match?({:ok, _}, reply),
          do: Effects.hook(data, :on_record, [req.record, reply])

        answer(data, req, reply)
        {%{data | requests: requests}, :ok}

      {{:internal, :replay}, requests} ->
        if Replay.pending?(data.replay, id) do
          {result, replay} = Replay.answered(data.replay, id, response)

          with {:failed, command, error} <- result do
            Logger.warning(
              "dspy_bridge worker #{data.os_pid}: replaying #{command} failed: " <>
                inspect(error, limit: 10)
            )
          end

          {%{data | requests: requests, replay: replay}, :replay_answered}
        else
          {%{data | requests: requests}, :ok}
        end

      {{:internal, tag}, requests} ->
        if match?(%{"success" => false}, response) do
          Logger.debug(
            "dspy_bridge worker #{data.os_pid}: #{inspect(tag)} answered #{inspect(response)}"
          )
        end

        {%{data | requests: requests}, :ok}

      {{:abandoned, command}, requests} ->
        outcome = Protocol.outcome(response)

        Logger.debug(
          "dspy_bridge worker #{data.os_pid}: dropped late #{outcome} reply for timed-out request #{inspect(id)} (#{command})"
        )

        Effects.emit(data, :client, "late_reply_dropped", %{
          "id" => id,
          "command" => command,
          "outcome" => outcome
        })

        {bump(%{data | requests: requests}, :late_replies_dropped), :ok}

      {nil, _} ->
        # e.g. an `invalid_frame` answer with `id: nil`: it names no request
        what =
          "an answer to no pending request (id #{inspect(id)}): #{inspect(response, limit: 10)}"

        {unexpected(data, what), :ok}
    end
  end

  def new_request(from, {:request, command, {args_bin, shape}, timeout, record, load}) do
    %{
      from: from,
      command: command,
      args: args_bin,
      shape: shape,
      timeout: timeout,
      record: record,
      load: load,
      started: System.monotonic_time(),
      timer: nil
    }
  end

  def start_timer(%{timeout: :infinity} = req, _id), do: req

  def start_timer(req, id),
    do: %{req | timer: :erlang.start_timer(req.timeout, self(), {:req_timeout, id})}

  def drain_queue(data) do
    if Requests.room?(data.requests, data.max_in_flight) do
      case Requests.dequeue(data.requests) do
        {:ok, id, req, requests} -> drain_queue(dispatch(%{data | requests: requests}, id, req))
        :empty -> data
      end
    else
      data
    end
  end

  # Sends request `id` (its timer started when it was accepted, if queued).
  def dispatch(data, id, req) do
    req = if req.timer == nil, do: start_timer(req, id), else: req

    timeout_ms =
      case req.timeout do
        :infinity ->
          nil

        timeout ->
          elapsed =
            System.convert_time_unit(System.monotonic_time() - req.started, :native, :millisecond)

          max(timeout - elapsed, 1) + data.margin
      end

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
        answer(data, req, {:error, error})
        bump(data, :limit_exceeded)
    end
  end

  def request_timeout(id, state, data) do
    case Requests.pop(data.requests, id) do
      {{:queued, req}, requests} ->
        # still queued: lazily skipped when dequeued
        Effects.reply(req, {:error, timeout_error(req)})
        bump(%{data | requests: requests}, :timeouts)

      {{:in_flight, req}, requests} ->
        Effects.reply(req, {:error, timeout_error(req)})
        requests = Requests.put(requests, id, {:abandoned, req.command})
        data = bump(%{data | requests: requests}, :timeouts)
        data = data |> send_internal("cancel", %{"request_id" => id}, :cancel) |> sent_data()
        data = bump(data, :cancels_sent)
        if state == :ready, do: drain_queue(data), else: data

      _ ->
        data
    end
  end

  def timeout_error(req),
    do: Error.new(:timeout, "#{req.command} did not complete within its timeout; cancelled")

  # Commands of the client's own (init commands, replay, cancel, shutdown):
  # `{:ok, id, data}`, or `{:error, data}` for one that could not be sent.
  def send_internal(data, command, args, tag) do
    {id, requests} = Requests.new_id(data.requests)
    encoded = {MsgPack.encode!(args), Protocol.shape(args)}

    case Protocol.encode_request(data.limits, id, command, encoded, nil) do
      {:ok, frame} ->
        Effects.send_frame(data.port, frame)
        {:ok, id, %{data | requests: Requests.put(requests, id, {:internal, tag})}}

      {:error, error} ->
        Logger.error("dspy_bridge worker #{data.os_pid}: #{command} not sent: #{error.message}")
        {:error, data}
    end
  rescue
    ArgumentError -> {:error, data}
  end

  def sent_data({:ok, _id, data}), do: data

  def sent_data({:error, data}), do: data

  def send_shutdown(data),
    do: sent_data(send_internal(data, "shutdown", %{"grace_ms" => data.grace}, :shutdown))

  def fail_all(data, message) do
    error = Error.new(:worker_exited, message)
    {callers, requests} = Requests.take_callers(data.requests)

    for req <- callers do
      Effects.cancel_timer(req.timer)
      Effects.reply(req, {:error, error})
    end

    Enum.each(data.ready_waiters, &:gen_statem.reply(&1, {:error, error}))
    %{data | requests: requests, ready_waiters: []}
  end

  # The caller's reply, and its telemetry.
  def answer(data, req, reply) do
    Effects.reply(req, reply)
    Effects.request_telemetry(data, req, reply)
  end

  def info_map(state, data) do
    Map.merge(data.counters, %{
      status: status(state),
      os_pid: data.os_pid,
      worker_id: data.ready && data.ready["worker_id"],
      in_flight: data.requests.in_flight,
      queued: data.requests.queued,
      max_in_flight: data.max_in_flight,
      max_frame_bytes: data.limits.max_frame_bytes,
      uptime_ms: System.monotonic_time(:millisecond) - data.started_at,
      ready: data.ready
    })
  end

  # The status the pool and info/1 show: the state, with :draining as :stopping.
  def status(:draining), do: :stopping

  def status(state), do: state

  def unexpected(data, what) do
    Logger.warning("dspy_bridge worker #{data.os_pid} sent #{what}")
    bump(data, :unexpected_frames)
  end

  def bump(data, key), do: %{data | counters: Map.update!(data.counters, key, &(&1 + 1))}

  def enqueue(req, data) do
    if data.requests.queued >= data.max_queue do
      overloaded(req, data)
    else
      {id, requests} = Requests.new_id(data.requests)
      req = start_timer(req, id)
      {:keep_state, %{data | requests: Requests.put(requests, id, {:queued, req})}}
    end
  end

  def overloaded(req, data) do
    Effects.release(req.load)
    %{in_flight: in_flight, queued: queued} = data.requests

    error =
      Error.new(
        :overloaded,
        "worker #{data.os_pid} has #{in_flight} requests in flight and #{queued} queued",
        details: %{"in_flight" => in_flight, "queued" => queued}
      )

    {:keep_state, bump(data, :overloaded), [{:reply, req.from, {:error, error}}]}
  end

  # The message request/4 and send_request/4 hand to the worker process. The
  # args are encoded and measured here, in the caller, so the worker process
  # only compares numbers.
  def request_message(command, args, opts, load) do
    with {:ok, encoded} <- Protocol.encode_args(args) do
      timeout = Keyword.get(opts, :timeout, 30_000)
      {:ok, {:request, to_string(command), encoded, timeout, Keyword.get(opts, :record), load}}
    end
  end

  # A frame read while the worker drains in terminate/3.
  def drain_frame(frame, data) do
    case Protocol.decode(frame) do
      {:response, id, response} -> data |> handle_response(id, response) |> elem(0)
      _ -> data
    end
  end
end
