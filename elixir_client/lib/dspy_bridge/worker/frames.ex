defmodule DSPyBridge.Worker.Frames do
  @moduledoc false
  # What DSPyBridge.Worker does with a decoded frame from the worker
  # (DSPyBridge.Protocol.decode/1): its `ready` event, a response (see
  # DSPyBridge.Worker.Replies), the events it acts on (`engine_failed`,
  # `session_evicted`, the host function `callback` and `callback_abandoned`,
  # see DSPyBridge.Worker.HostCalls), the events of one request (`progress`,
  # `stream`, `stream_status`: also sent to that request's caller when it
  # listens, see `forward/3`) and those it only passes on, as :gen_statem
  # results.

  require Logger

  alias DSPyBridge.{Error, Protocol}
  alias DSPyBridge.Worker.{Data, Effects, HostCalls, Outbound, Replayer, Replies, Requests}

  # events about one request, named by its `request_id`
  @request_events ["progress", "stream", "stream_status"]

  @doc "The worker's `ready` event, while :starting: on to :replaying."
  @spec ready(map(), Data.t()) :: :gen_statem.event_handler_result(atom())
  def ready(event, data) do
    if event["protocol_version"] != 1 do
      Logger.warning(
        "dspy_bridge worker #{data.os_pid} speaks protocol #{inspect(event["protocol_version"])}, expected 1"
      )
    end

    Logger.info(
      "dspy_bridge worker #{data.os_pid} ready (worker_id=#{text(event["worker_id"])}" <>
        if(data.pool, do: ", pool=#{inspect(data.pool.name)}[#{data.pool.index}])", else: ")")
    )

    data = %{data | ready: event, limits: Protocol.limits_from_ready(event)}
    Effects.emit(data, :worker, "ready", event)
    {:next_state, :replaying, data}
  end

  @doc "A decoded frame in `state` (for `ready` while :starting, see `ready/2`)."
  @spec handle(Protocol.decoded(), atom(), Data.t()) :: :gen_statem.event_handler_result(atom())
  def handle({:response, id, response}, state, data) do
    case Replies.response(data, id, response) do
      {data, :replay_answered} when state == :replaying -> Replayer.step(data)
      {data, _} -> {:keep_state, if(state == :ready, do: Outbound.drain_queue(data), else: data)}
    end
  end

  def handle({:event, "ready", _}, state, data),
    # `ready` is sent once, first: another one changes nothing
    do: {:keep_state, Data.unexpected(data, "a ready event while #{Data.status(state)}")}

  def handle({:event, "engine_failed", event}, state, data) do
    error = Error.from_wire(event["error"])

    Logger.error(
      "dspy_bridge worker #{data.os_pid}: the DSPy engine failed to load: #{error.message}" <>
        if(state == :draining, do: "", else: "; stopping the worker so it is replaced")
    )

    Effects.emit(data, :worker, "engine_failed", event)

    if state == :draining do
      :keep_state_and_data
    else
      # Out of the pool's routing table at once: calls that arrive while this
      # process drains wait for its replacement instead. terminate/3 lets the
      # worker answer what is in flight, then fails the rest with :worker_exited.
      Effects.unregister(data)
      {:stop, {:shutdown, {:engine_failed, error.message}}}
    end
  end

  def handle({:event, "session_evicted", event}, _state, data) do
    session = event["session_id"]

    cond do
      not is_binary(session) ->
        {:keep_state,
         Data.unexpected(data, "session_evicted without a session_id: #{inspect(event)}")}

      data.pool != nil and not data.pool.serves_session?.(session) ->
        # not a session of this worker: its records belong to another one
        {:keep_state,
         Data.unexpected(
           data,
           "session_evicted for #{inspect(session)}, a session it does not serve"
         )}

      true ->
        Logger.info("dspy_bridge worker #{data.os_pid}: session #{inspect(session)} evicted")
        Effects.hook(data, :on_session_evicted, [session])
        Effects.emit(data, :worker, "session_evicted", event)
        :keep_state_and_data
    end
  end

  def handle({:event, "callback", event}, _state, data) do
    data = HostCalls.callback(data, event)
    Effects.emit(data, :worker, "callback", event)
    {:keep_state, data}
  end

  def handle({:event, "callback_abandoned", event}, _state, data) do
    data = HostCalls.abandoned(data, event)
    Effects.emit(data, :worker, "callback_abandoned", event)
    {:keep_state, data}
  end

  def handle({:event, name, event}, _state, data) when name in @request_events do
    Logger.debug("dspy_bridge worker #{data.os_pid} #{name}: #{inspect(event, limit: 20)}")
    forward(data, name, event)
    Effects.emit(data, :worker, name, event)
    :keep_state_and_data
  end

  def handle({:event, name, event}, _state, data) do
    Logger.info(
      "dspy_bridge worker #{data.os_pid} event #{inspect(name)}: #{inspect(event, limit: 20)}"
    )

    Effects.emit(data, :worker, name, event)
    :keep_state_and_data
  end

  def handle({:unexpected, what}, _state, data),
    do: {:keep_state, Data.unexpected(data, what)}

  @doc """
  Sends a `progress`, `stream` or `stream_status` event to the caller of
  the request it names (`request_id`), if that request is in flight and
  its caller listens; otherwise drops it. Never blocks.
  """
  @spec forward(Data.t(), String.t(), map()) :: :ok
  def forward(data, name, event) when name in @request_events,
    do: Effects.notify(Requests.listener(data.requests, event["request_id"]), name, event)

  def forward(_data, _name, _event), do: :ok

  defp text(s) when is_binary(s), do: s

  defp text(other), do: inspect(other, limit: 20)
end
