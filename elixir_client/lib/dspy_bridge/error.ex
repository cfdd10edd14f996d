defmodule DSPyBridge.Error do
  @moduledoc """
  An error returned by the bridge, as `{:error, %DSPyBridge.Error{}}`.

  `type` is one of the protocol's error types as an atom:

    * from the worker: `:invalid_frame`, `:invalid_request`, `:unknown_command`,
      `:invalid_args`, `:not_found`, `:already_exists`, `:lm_not_configured`,
      `:lm_error`, `:timeout`, `:cancelled`, `:limit_exceeded`,
      `:shutting_down`, `:engine_unavailable` (DSPy failed to load in that
      worker; retryable — the worker is replaced), `:host_error` (a host
      function the request needed — a `best_of_n`/`refine` reward or a mock
      LM's generator — failed, answered something malformed or nothing in
      time, or is not declared; `details["reason"]` says which, see
      `DSPyBridge.register_tools/3`), `:internal`;
    * from the client itself: `:timeout` (the call's timeout ran out; the
      worker was sent `cancel`), `:worker_exited` (the worker process died
      or was stopped while the call was in flight or queued; also, not
      retryable, with `details["reason"] == "start_failed"`, a worker that
      could not start: see "When a worker cannot start" in the README),
      `:overloaded` (the worker's in-flight bound and queue are full),
      `:limit_exceeded`
      (the request was not sent: its frame is larger than the worker's
      `max_frame_bytes`, holds more items than its `max_frame_items`, or
      nests deeper than the protocol's 128 levels),
      `:internal` (the worker sent a malformed response).

  `details` is the worker's `details` map (string keys, as decoded) or `nil`;
  `retryable` says whether retrying the same call may succeed. `traceback` is
  only set for `:internal` errors. The struct is an exception, so
  `raise error` works.
  """

  @worker_types ~w(invalid_frame invalid_request unknown_command invalid_args not_found
                   already_exists lm_not_configured lm_error timeout cancelled
                   limit_exceeded shutting_down engine_unavailable host_error internal)a
  @client_types [:worker_exited, :overloaded]

  @typedoc "An error type from the protocol, or one the client adds."
  @type type ::
          :invalid_frame
          | :invalid_request
          | :unknown_command
          | :invalid_args
          | :not_found
          | :already_exists
          | :lm_not_configured
          | :lm_error
          | :timeout
          | :cancelled
          | :limit_exceeded
          | :shutting_down
          | :engine_unavailable
          | :host_error
          | :internal
          | :worker_exited
          | :overloaded

  @type t :: %__MODULE__{
          type: type(),
          message: String.t(),
          details: map() | nil,
          retryable: boolean(),
          traceback: String.t() | nil
        }

  defexception type: :internal, message: "", details: nil, retryable: false, traceback: nil

  @doc "All error types, worker's and client's."
  @spec types() :: [type()]
  def types, do: @worker_types ++ @client_types

  @doc """
  Builds an error from the worker's decoded `error` map.

  An unknown type string (from a newer worker) becomes `:internal` with the
  original string kept in `details["type"]`. A malformed error never raises:
  a `message` or `traceback` that is not a string is shown with `inspect/1`,
  `details` that are not a map are kept as `%{"value" => details}`, and
  anything but a map becomes an `:internal` error.

      iex> DSPyBridge.Error.from_wire(%{"type" => "not_found", "message" => "no such program", "retryable" => false})
      %DSPyBridge.Error{type: :not_found, message: "no such program", retryable: false}
  """
  @spec from_wire(term()) :: t()
  def from_wire(%{} = err) do
    raw = Map.get(err, "type")
    type = Enum.find(@worker_types, :internal, &(Atom.to_string(&1) == raw))

    details =
      case Map.get(err, "details") do
        d when is_map(d) or is_nil(d) -> d
        d -> %{"value" => d}
      end

    details =
      if type == :internal and raw != "internal",
        do: Map.put(details || %{}, "type", raw),
        else: details

    %__MODULE__{
      type: type,
      message: text(Map.get(err, "message", "")),
      details: details,
      retryable: Map.get(err, "retryable", false) == true,
      traceback: if(Map.get(err, "traceback") != nil, do: text(err["traceback"]))
    }
  end

  def from_wire(other),
    do: %__MODULE__{type: :internal, message: "malformed error: #{inspect(other, limit: 20)}"}

  defp text(s) when is_binary(s), do: s
  defp text(nil), do: ""
  defp text(other), do: inspect(other, limit: 20)

  @doc "Builds a client-side error."
  @spec new(type(), String.t(), keyword()) :: t()
  def new(type, message, opts \\ []) do
    %__MODULE__{
      type: type,
      message: message,
      details: Keyword.get(opts, :details),
      retryable: Keyword.get(opts, :retryable, type in [:timeout, :worker_exited, :overloaded])
    }
  end

  @impl true
  def message(%__MODULE__{type: type, message: message}), do: "#{type}: #{message}"
end
