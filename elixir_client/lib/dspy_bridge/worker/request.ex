defmodule DSPyBridge.Worker.Request do
  @moduledoc false
  # One caller's request: the message `request/4` and `send_request/4` hand
  # to the worker process (its args encoded and measured in the caller, so
  # the worker process only compares numbers), the record of it the worker
  # process keeps in its request table, its timer, and how much of its
  # timeout is left for the worker's own `timeout_ms`. A request sent with
  # `listen:` also has a listener: the alias its caller receives the
  # worker's events for it on (`progress`, `stream`, `stream_status`).

  alias DSPyBridge.{Error, Protocol}

  # for callers that did not go through `DSPyBridge.Options` (the default is the schema's)
  @default_timeout DSPyBridge.Options.default(:request, :timeout)

  defstruct [
    :from,
    :command,
    :args,
    :shape,
    :timeout,
    :record,
    :load,
    :started,
    timer: nil,
    listener: nil
  ]

  @typedoc "The message a caller sends the worker process."
  @type message ::
          {:request, String.t(), {binary(), Protocol.shape()}, timeout(), term(),
           {:atomics.atomics_ref(), non_neg_integer()} | nil}

  @type t :: %__MODULE__{
          from: GenServer.from(),
          command: String.t(),
          args: binary(),
          shape: Protocol.shape(),
          timeout: timeout(),
          record: term(),
          load: {:atomics.atomics_ref(), non_neg_integer()} | nil,
          started: integer(),
          timer: reference() | nil,
          listener: reference() | nil
        }

  @doc "The message for `command` with `args`, or an `:invalid_args` error (built in the caller)."
  @spec message(String.t() | atom(), term(), keyword(), term()) ::
          {:ok, message()} | {:error, Error.t()}
  def message(command, args, opts, load) do
    with {:ok, encoded} <- Protocol.encode_args(args) do
      timeout = Keyword.get(opts, :timeout, @default_timeout)
      {:ok, {:request, to_string(command), encoded, timeout, Keyword.get(opts, :record), load}}
    end
  end

  @doc """
  The request of the caller `from`, accepted now; `listener` is the alias
  its events go to (`nil`: none).
  """
  @spec new(GenServer.from(), message(), reference() | nil) :: t()
  def new(from, {:request, command, {args_bin, shape}, timeout, record, load}, listener \\ nil) do
    %__MODULE__{
      listener: listener,
      from: from,
      command: command,
      args: args_bin,
      shape: shape,
      timeout: timeout,
      record: record,
      load: load,
      started: System.monotonic_time()
    }
  end

  @doc "Starts the request's timer (once; none for `:infinity`), sent to this process under wire `id`."
  @spec start_timer(t(), non_neg_integer()) :: t()
  def start_timer(%__MODULE__{timer: nil, timeout: timeout} = req, id) when timeout != :infinity,
    do: %{req | timer: :erlang.start_timer(timeout, self(), {:req_timeout, id})}

  def start_timer(req, _id), do: req

  @doc """
  The worker's `timeout_ms` for the request: what is left of its timeout
  (at least 1 ms) plus `margin`, or `nil` for `:infinity`.
  """
  @spec timeout_ms(t(), non_neg_integer()) :: pos_integer() | nil
  def timeout_ms(%__MODULE__{timeout: :infinity}, _margin), do: nil

  def timeout_ms(%__MODULE__{timeout: timeout, started: started}, margin) do
    elapsed = System.convert_time_unit(System.monotonic_time() - started, :native, :millisecond)
    max(timeout - elapsed, 1) + margin
  end

  @doc "The error a caller gets when the request's timeout runs out."
  @spec timeout_error(t()) :: Error.t()
  def timeout_error(req),
    do: Error.new(:timeout, "#{req.command} did not complete within its timeout; cancelled")
end
