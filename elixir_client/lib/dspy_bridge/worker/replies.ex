defmodule DSPyBridge.Worker.Replies do
  @moduledoc false
  # What callers get back: a response from the worker, matched by its wire
  # id with its entry in the request table (a caller's answer, recorded with
  # the pool when it succeeds; a replay command's, handed to
  # DSPyBridge.Worker.Replayer; the client's own; a late one for a timed-out
  # request, dropped; or none at all), and every waiting caller failed at
  # once when the worker is gone.

  require Logger

  alias DSPyBridge.{Error, Protocol}
  alias DSPyBridge.Worker.{Admission, Data, Effects, Replayer, Requests}

  @doc "The response to wire id `id`: `{data, :replay_answered | :ok}`."
  @spec response(Data.t(), term(), map()) :: {Data.t(), :replay_answered | :ok}
  def response(data, id, response) do
    case Requests.pop(data.requests, id) do
      {{:in_flight, req}, requests} ->
        Effects.cancel_timer(req.timer)
        reply = Protocol.to_reply(response)

        if req.record != nil and match?({:ok, _}, reply),
          do: Effects.hook(data, :on_record, [req.record, reply])

        Effects.answer(data, req, reply)
        {%{data | requests: requests}, :ok}

      {{:internal, :replay}, requests} ->
        Replayer.answered(%{data | requests: requests}, id, response)

      {{:internal, :callback_reply}, requests} ->
        callback_replied(data, response)
        {%{data | requests: requests}, :ok}

      {{:internal, tag}, requests} ->
        if match?(%{"success" => false}, response) do
          Logger.debug(
            "dspy_bridge worker #{data.os_pid}: #{inspect(tag)} answered #{inspect(response)}"
          )
        end

        {%{data | requests: requests}, :ok}

      {{:abandoned, command}, requests} ->
        {late_reply(%{data | requests: requests}, id, command, response), :ok}

      {nil, _} ->
        # e.g. an `invalid_frame` answer with `id: nil`: it names no request
        what =
          "an answer to no pending request (id #{inspect(id)}): #{inspect(response, limit: 10)}"

        {Data.unexpected(data, what), :ok}
    end
  end

  # The worker's answer to a host function's `callback_reply`: a late one
  # (the worker stopped waiting) is ignored by the worker, as by us.
  defp callback_replied(data, response) do
    case response do
      %{"success" => true, "result" => %{"accepted" => true}} ->
        :ok

      %{"success" => true, "result" => result} ->
        Logger.debug(
          "dspy_bridge worker #{data.os_pid}: callback answer not taken: #{inspect(result, limit: 10)}"
        )

      other ->
        Logger.warning(
          "dspy_bridge worker #{data.os_pid}: callback_reply refused: #{inspect(other, limit: 20)}"
        )
    end
  end

  defp late_reply(data, id, command, response) do
    outcome = Protocol.outcome(response)

    Logger.debug(
      "dspy_bridge worker #{data.os_pid}: dropped late #{outcome} reply for timed-out request #{inspect(id)} (#{command})"
    )

    Effects.emit(data, :client, "late_reply_dropped", %{
      "id" => id,
      "command" => command,
      "outcome" => outcome
    })

    Data.bump(data, :late_replies_dropped)
  end

  @doc "Fails every waiting caller (queued, in flight, waiting for ready) with `:worker_exited`."
  @spec fail_all(Data.t(), String.t()) :: Data.t()
  def fail_all(data, message) do
    error = Error.new(:worker_exited, message)
    Admission.unqueue_all(data, :worker_exited)
    {callers, requests} = Requests.take_callers(data.requests)

    for req <- callers do
      Effects.cancel_timer(req.timer)
      Effects.answer(data, req, {:error, error})
    end

    Enum.each(data.ready_waiters, &:gen_statem.reply(&1, {:error, error}))
    %{data | requests: requests, ready_waiters: []}
  end
end
