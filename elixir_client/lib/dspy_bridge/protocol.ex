defmodule DSPyBridge.Protocol do
  @moduledoc false
  # The wire protocol without I/O (see protocol/PROTOCOL.md): encoding a
  # request's frame, the frame limits a request is checked against before it
  # is sent, and decoding a frame from the worker into an event or a reply.
  # Nothing here touches a port or a process, so it is tested on its own.

  alias DSPyBridge.{Error, MsgPack}

  # the protocol's defaults, used until (or unless) `ready` announces `limits`
  @default_max_frame_bytes 67_108_864
  @default_max_depth 128

  @typedoc "`{depth, items}` of a term, as the worker measures a frame."
  @type shape :: {non_neg_integer(), non_neg_integer()}

  @typedoc "The limits a request frame is checked against."
  @type limits :: %{
          max_frame_bytes: pos_integer(),
          max_depth: pos_integer(),
          max_frame_items: pos_integer() | nil
        }

  @typedoc "A decoded frame from the worker."
  @type decoded ::
          {:event, String.t(), map()}
          | {:response, term(), map()}
          | {:unexpected, String.t()}

  @doc "The limits in force before `ready` (the protocol's defaults)."
  @spec default_limits() :: limits()
  def default_limits,
    do: %{
      max_frame_bytes: @default_max_frame_bytes,
      max_depth: @default_max_depth,
      max_frame_items: nil
    }

  @doc "The limits a `ready` event announces (defaults for what it leaves out)."
  @spec limits_from_ready(map()) :: limits()
  def limits_from_ready(event) do
    limits = if is_map(event["limits"]), do: event["limits"], else: %{}

    %{
      max_frame_bytes: limit(limits, "max_frame_bytes", @default_max_frame_bytes),
      max_depth: limit(limits, "max_depth", @default_max_depth),
      # no default: a worker that announces no item limit has none
      max_frame_items: limit(limits, "max_frame_items", nil)
    }
  end

  defp limit(limits, key, default) do
    case limits[key] do
      n when is_integer(n) and n > 0 -> n
      _ -> default
    end
  end

  @doc """
  Encodes a request's args (in the caller, so the worker process only
  compares numbers): `{:ok, {args_bin, shape}}` or an `:invalid_args` error.
  """
  @spec encode_args(term()) :: {:ok, {binary(), shape()}} | {:error, Error.t()}
  def encode_args(args) do
    args = args || %{}

    case MsgPack.encode(args) do
      {:ok, args_bin} ->
        {:ok, {args_bin, shape(args)}}

      {:error, reason} ->
        {:error,
         Error.new(:invalid_args, "arguments cannot be encoded as msgpack: #{inspect(reason)}")}
    end
  end

  @doc """
  {depth, items} of a term, as the worker measures a frame: depth is how
  many levels of arrays and maps nest (a scalar: 0; map keys count), items
  counts each container once plus each of its elements, or each key and
  each value of a map.
  """
  @spec shape(term()) :: shape()
  def shape(%MsgPack.Bin{}), do: {0, 0}
  def shape(%MsgPack.Ext{}), do: {0, 0}

  def shape(map) when is_map(map) do
    {depth, items} =
      Enum.reduce(map, {0, 1 + 2 * map_size(map)}, fn {k, v}, {depth, items} ->
        {dk, ik} = shape(k)
        {dv, iv} = shape(v)
        {depth |> max(dk) |> max(dv), items + ik + iv}
      end)

    {depth + 1, items}
  end

  def shape(list) when is_list(list) do
    {depth, items} =
      Enum.reduce(list, {0, 1 + length(list)}, fn x, {depth, items} ->
        {dx, ix} = shape(x)
        {max(depth, dx), items + ix}
      end)

    {depth + 1, items}
  end

  def shape(_scalar), do: {0, 0}

  @doc """
  The frame of request `id` (without the 4-byte length), checked against
  `limits`: `{:ok, iodata}`, or `{:error, %Error{type: :limit_exceeded}}`
  for a frame the worker could not read (it would answer `invalid_frame`
  with `id: nil`, which no caller could be matched with).
  """
  @spec encode_request(limits(), term(), String.t(), {binary(), shape()}, pos_integer() | nil) ::
          {:ok, iodata()} | {:error, Error.t()}
  def encode_request(limits, id, command, {args_bin, shape}, timeout_ms) do
    frame = frame(id, command, args_bin, timeout_ms)

    case check_limits(limits, frame, shape, timeout_ms) do
      :ok -> {:ok, frame}
      error -> error
    end
  end

  # A request map built around the pre-encoded args (a fixmap of 3 or 4 pairs).
  defp frame(id, command, args_bin, timeout_ms) do
    pairs = [
      MsgPack.encode!("id"),
      MsgPack.encode!(id),
      MsgPack.encode!("command"),
      MsgPack.encode!(command),
      MsgPack.encode!("args"),
      args_bin
    ]

    case timeout_ms do
      nil -> [<<0x83>> | pairs]
      ms -> [<<0x84>>, pairs, MsgPack.encode!("timeout_ms"), MsgPack.encode!(ms)]
    end
  end

  # The frame's own size, and its shape: the request envelope (a map of 3
  # pairs, or 4 with timeout_ms) around the args.
  defp check_limits(limits, frame, {args_depth, args_items}, timeout_ms) do
    size = IO.iodata_length(frame)
    depth = 1 + args_depth
    items = 1 + 2 * if(timeout_ms, do: 4, else: 3) + args_items

    cond do
      size > limits.max_frame_bytes ->
        limit_error(
          "request frame of #{size} bytes is over the worker's limit of #{limits.max_frame_bytes} bytes",
          "max_frame_bytes",
          limits.max_frame_bytes,
          %{"size" => size}
        )

      depth > limits.max_depth ->
        limit_error(
          "request nests #{depth} levels of arrays and maps, over the worker's limit of #{limits.max_depth}",
          "max_depth",
          limits.max_depth,
          %{"depth" => depth}
        )

      limits.max_frame_items != nil and items > limits.max_frame_items ->
        limit_error(
          "request frame of #{items} msgpack items is over the worker's limit of #{limits.max_frame_items}",
          "max_frame_items",
          limits.max_frame_items,
          %{"items" => items}
        )

      true ->
        :ok
    end
  end

  defp limit_error(message, limit, value, measured) do
    {:error,
     Error.new(:limit_exceeded, message <> "; not sent",
       retryable: false,
       details: Map.merge(%{"limit" => limit, limit => value}, measured)
     )}
  end

  @doc """
  Decodes a frame from the worker: `{:event, name, map}`, `{:response, id,
  map}`, or `{:unexpected, description}` for a frame that is not msgpack or
  is neither an event nor a response.
  """
  @spec decode(binary()) :: decoded()
  def decode(frame) do
    case MsgPack.decode(frame) do
      {:ok, %{"event" => name} = event} when is_binary(name) and not is_map_key(event, "id") ->
        {:event, name, event}

      {:ok, %{"id" => id} = response} ->
        {:response, id, response}

      {:ok, other} ->
        {:unexpected, "an unexpected message: #{inspect(other, limit: 20)}"}

      {:error, reason} ->
        {:unexpected, "an undecodable frame (#{inspect(reason)})"}
    end
  end

  @doc """
  A response as its caller's reply. A response that is neither a success
  nor an error map is the worker's fault: an `:internal` error.
  """
  @spec to_reply(map()) :: {:ok, term()} | {:error, Error.t()}
  def to_reply(%{"success" => true} = response), do: {:ok, Map.get(response, "result")}

  def to_reply(%{"error" => err}) when is_map(err), do: {:error, Error.from_wire(err)}

  def to_reply(other) do
    {:error,
     Error.new(:internal, "malformed response from the worker: #{inspect(other, limit: 20)}",
       details: %{"response" => other}
     )}
  end

  @doc "A response's outcome as a string: `\"ok\"`, its error type, or `\"malformed\"`."
  @spec outcome(map()) :: String.t()
  def outcome(%{"success" => true}), do: "ok"
  def outcome(%{"error" => %{"type" => type}}) when is_binary(type), do: type
  def outcome(_), do: "malformed"
end
