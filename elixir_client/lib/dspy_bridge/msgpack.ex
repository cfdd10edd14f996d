defmodule DSPyBridge.MsgPack do
  @moduledoc """
  A small, complete MessagePack codec (no dependencies).

  It covers the whole format: nil, booleans, integers of every width
  (positive/negative fixint, int 8/16/32/64, uint 8/16/32/64), float 32/64,
  str (fixstr, str 8/16/32), bin 8/16/32, ext (fixext 1/2/4/8/16, ext 8/16/32),
  arrays and maps of every size class.

  ## Term mapping

  | MessagePack        | Elixir                                                  |
  | ------------------ | ------------------------------------------------------- |
  | nil                | `nil`                                                   |
  | true / false       | `true` / `false`                                        |
  | int / uint         | integer (encoding accepts -2^63 .. 2^64-1)              |
  | float 32 / 64      | float (encoding always writes float 64)                 |
  | NaN, +inf, -inf    | `:nan`, `:infinity`, `:neg_infinity` (both ways)        |
  | str                | UTF-8 binary (`String.t()`)                             |
  | bin                | `%DSPyBridge.MsgPack.Bin{data: binary}`                 |
  | ext                | `%DSPyBridge.MsgPack.Ext{type: -128..127, data: binary}` |
  | array              | list                                                    |
  | map                | map                                                     |

  Other atoms are encoded as str (so `%{session_id: "a"}` can be sent), which
  means they decode as strings. Decoding never creates atoms. A binary that is
  not valid UTF-8 cannot be encoded as str: wrap raw bytes in
  `DSPyBridge.MsgPack.Bin`. msgpack `str` and `bin` therefore round-trip
  distinctly.

      iex> {:ok, bytes} = DSPyBridge.MsgPack.encode(%{"a" => [1, -1, 1.5, nil, true]})
      iex> DSPyBridge.MsgPack.decode(bytes)
      {:ok, %{"a" => [1, -1, 1.5, nil, true]}}

      iex> {:ok, bytes} = DSPyBridge.MsgPack.encode(%DSPyBridge.MsgPack.Bin{data: <<0, 255>>})
      iex> bytes
      <<0xC4, 2, 0, 255>>
      iex> DSPyBridge.MsgPack.decode(bytes)
      {:ok, %DSPyBridge.MsgPack.Bin{data: <<0, 255>>}}
  """

  defmodule Bin do
    @moduledoc "A msgpack `bin` value: raw bytes, kept distinct from strings."
    @enforce_keys [:data]
    defstruct [:data]
    @type t :: %__MODULE__{data: binary()}
  end

  defmodule Ext do
    @moduledoc "A msgpack `ext` value: an application type code (-128..127) and its bytes."
    @enforce_keys [:type, :data]
    defstruct [:type, :data]
    @type t :: %__MODULE__{type: -128..127, data: binary()}
  end

  @typedoc "Any Elixir term this codec can encode."
  @type t ::
          nil
          | boolean()
          | integer()
          | float()
          | :nan
          | :infinity
          | :neg_infinity
          | atom()
          | String.t()
          | Bin.t()
          | Ext.t()
          | [t()]
          | %{optional(t()) => t()}

  @typedoc "Why decoding or encoding failed."
  @type error_reason ::
          :truncated
          | :trailing_bytes
          | :invalid_utf8
          | :max_depth
          | {:invalid_byte, byte()}
          | {:unencodable, term()}

  @max_depth 512

  # -- encoding ---------------------------------------------------------------

  @doc """
  Encodes `term` as one msgpack value. Returns `{:ok, binary}` or
  `{:error, {:unencodable, term}}` naming the first term that cannot be encoded.
  """
  @spec encode(t()) :: {:ok, binary()} | {:error, error_reason()}
  def encode(term) do
    {:ok, IO.iodata_to_binary(do_encode(term))}
  catch
    {:unencodable, _} = reason -> {:error, reason}
  end

  @doc "Like `encode/1` but returns the binary or raises `ArgumentError`."
  @spec encode!(t()) :: binary()
  def encode!(term) do
    case encode(term) do
      {:ok, bin} -> bin
      {:error, reason} -> raise ArgumentError, "cannot encode as msgpack: #{inspect(reason)}"
    end
  end

  defp do_encode(nil), do: <<0xC0>>
  defp do_encode(false), do: <<0xC2>>
  defp do_encode(true), do: <<0xC3>>
  defp do_encode(:nan), do: <<0xCB, 0x7FF8000000000000::64>>
  defp do_encode(:infinity), do: <<0xCB, 0x7FF0000000000000::64>>
  defp do_encode(:neg_infinity), do: <<0xCB, 0xFFF0000000000000::64>>
  defp do_encode(i) when is_integer(i), do: encode_int(i)
  defp do_encode(f) when is_float(f), do: <<0xCB, f::float-64>>

  defp do_encode(s) when is_binary(s) do
    if String.valid?(s), do: [str_header(byte_size(s)), s], else: throw({:unencodable, s})
  end

  defp do_encode(a) when is_atom(a), do: do_encode(Atom.to_string(a))
  defp do_encode(%Bin{data: d}) when is_binary(d), do: [bin_header(byte_size(d)), d]

  defp do_encode(%Ext{type: t, data: d}) when is_binary(d) and t in -128..127,
    do: [ext_header(byte_size(d), t), d]

  defp do_encode(%_{} = struct), do: throw({:unencodable, struct})
  defp do_encode(l) when is_list(l), do: encode_list(l, 0, [])

  defp do_encode(m) when is_map(m) do
    [map_header(map_size(m)) | Enum.map(m, fn {k, v} -> [do_encode(k), do_encode(v)] end)]
  end

  defp do_encode(other), do: throw({:unencodable, other})

  defp encode_list([], n, acc), do: [array_header(n) | :lists.reverse(acc)]
  defp encode_list([h | t], n, acc), do: encode_list(t, n + 1, [do_encode(h) | acc])
  defp encode_list(improper, _, _), do: throw({:unencodable, improper})

  defp encode_int(i) when i >= 0 and i <= 0x7F, do: <<i>>
  defp encode_int(i) when i < 0 and i >= -32, do: <<i::signed-8>>
  defp encode_int(i) when i >= 0 and i <= 0xFF, do: <<0xCC, i>>
  defp encode_int(i) when i >= 0 and i <= 0xFFFF, do: <<0xCD, i::16>>
  defp encode_int(i) when i >= 0 and i <= 0xFFFFFFFF, do: <<0xCE, i::32>>
  defp encode_int(i) when i >= 0 and i <= 0xFFFFFFFFFFFFFFFF, do: <<0xCF, i::64>>
  defp encode_int(i) when i < 0 and i >= -0x80, do: <<0xD0, i::signed-8>>
  defp encode_int(i) when i < 0 and i >= -0x8000, do: <<0xD1, i::signed-16>>
  defp encode_int(i) when i < 0 and i >= -0x80000000, do: <<0xD2, i::signed-32>>
  defp encode_int(i) when i < 0 and i >= -0x8000000000000000, do: <<0xD3, i::signed-64>>
  defp encode_int(i), do: throw({:unencodable, i})

  defp str_header(n) when n <= 31, do: <<0b101::3, n::5>>
  defp str_header(n) when n <= 0xFF, do: <<0xD9, n>>
  defp str_header(n) when n <= 0xFFFF, do: <<0xDA, n::16>>
  defp str_header(n) when n <= 0xFFFFFFFF, do: <<0xDB, n::32>>

  defp bin_header(n) when n <= 0xFF, do: <<0xC4, n>>
  defp bin_header(n) when n <= 0xFFFF, do: <<0xC5, n::16>>
  defp bin_header(n) when n <= 0xFFFFFFFF, do: <<0xC6, n::32>>

  defp ext_header(1, t), do: <<0xD4, t::signed-8>>
  defp ext_header(2, t), do: <<0xD5, t::signed-8>>
  defp ext_header(4, t), do: <<0xD6, t::signed-8>>
  defp ext_header(8, t), do: <<0xD7, t::signed-8>>
  defp ext_header(16, t), do: <<0xD8, t::signed-8>>
  defp ext_header(n, t) when n <= 0xFF, do: <<0xC7, n, t::signed-8>>
  defp ext_header(n, t) when n <= 0xFFFF, do: <<0xC8, n::16, t::signed-8>>
  defp ext_header(n, t) when n <= 0xFFFFFFFF, do: <<0xC9, n::32, t::signed-8>>

  defp array_header(n) when n <= 15, do: <<0b1001::4, n::4>>
  defp array_header(n) when n <= 0xFFFF, do: <<0xDC, n::16>>
  defp array_header(n) when n <= 0xFFFFFFFF, do: <<0xDD, n::32>>

  defp map_header(n) when n <= 15, do: <<0b1000::4, n::4>>
  defp map_header(n) when n <= 0xFFFF, do: <<0xDE, n::16>>
  defp map_header(n) when n <= 0xFFFFFFFF, do: <<0xDF, n::32>>

  # -- decoding ---------------------------------------------------------------

  @doc """
  Decodes exactly one msgpack value from `binary`.

  Never raises on bad input: returns `{:error, reason}` for truncated data,
  trailing bytes, the reserved byte `0xC1`, a str that is not UTF-8, or nesting
  deeper than #{@max_depth} levels.
  """
  @spec decode(binary()) :: {:ok, t()} | {:error, error_reason()}
  def decode(binary) when is_binary(binary) do
    case value(binary, 0) do
      {term, <<>>} -> {:ok, term}
      {_term, _rest} -> {:error, :trailing_bytes}
    end
  catch
    {:decode, reason} -> {:error, reason}
  end

  @doc "Like `decode/1` but returns the term or raises `ArgumentError`."
  @spec decode!(binary()) :: t()
  def decode!(binary) do
    case decode(binary) do
      {:ok, term} -> term
      {:error, reason} -> raise ArgumentError, "invalid msgpack: #{inspect(reason)}"
    end
  end

  defp value(_, depth) when depth > @max_depth, do: throw({:decode, :max_depth})
  defp value(<<0xC0, r::bits>>, _), do: {nil, r}
  defp value(<<0xC2, r::bits>>, _), do: {false, r}
  defp value(<<0xC3, r::bits>>, _), do: {true, r}
  defp value(<<0::1, i::7, r::bits>>, _), do: {i, r}
  defp value(<<0b111::3, _::5, _::bits>> = b, _), do: negfix(b)
  defp value(<<0xCC, i, r::bits>>, _), do: {i, r}
  defp value(<<0xCD, i::16, r::bits>>, _), do: {i, r}
  defp value(<<0xCE, i::32, r::bits>>, _), do: {i, r}
  defp value(<<0xCF, i::64, r::bits>>, _), do: {i, r}
  defp value(<<0xD0, i::signed-8, r::bits>>, _), do: {i, r}
  defp value(<<0xD1, i::signed-16, r::bits>>, _), do: {i, r}
  defp value(<<0xD2, i::signed-32, r::bits>>, _), do: {i, r}
  defp value(<<0xD3, i::signed-64, r::bits>>, _), do: {i, r}
  defp value(<<0xCA, f::bits-32, r::bits>>, _), do: {float32(f), r}
  defp value(<<0xCB, f::bits-64, r::bits>>, _), do: {float64(f), r}
  defp value(<<0b101::3, n::5, r::bits>>, _), do: str(n, r)
  defp value(<<0xD9, n, r::bits>>, _), do: str(n, r)
  defp value(<<0xDA, n::16, r::bits>>, _), do: str(n, r)
  defp value(<<0xDB, n::32, r::bits>>, _), do: str(n, r)
  defp value(<<0xC4, n, r::bits>>, _), do: bin(n, r)
  defp value(<<0xC5, n::16, r::bits>>, _), do: bin(n, r)
  defp value(<<0xC6, n::32, r::bits>>, _), do: bin(n, r)
  defp value(<<0xD4, t::signed-8, r::bits>>, _), do: ext(1, t, r)
  defp value(<<0xD5, t::signed-8, r::bits>>, _), do: ext(2, t, r)
  defp value(<<0xD6, t::signed-8, r::bits>>, _), do: ext(4, t, r)
  defp value(<<0xD7, t::signed-8, r::bits>>, _), do: ext(8, t, r)
  defp value(<<0xD8, t::signed-8, r::bits>>, _), do: ext(16, t, r)
  defp value(<<0xC7, n, t::signed-8, r::bits>>, _), do: ext(n, t, r)
  defp value(<<0xC8, n::16, t::signed-8, r::bits>>, _), do: ext(n, t, r)
  defp value(<<0xC9, n::32, t::signed-8, r::bits>>, _), do: ext(n, t, r)
  defp value(<<0b1001::4, n::4, r::bits>>, d), do: array(n, r, d + 1, [])
  defp value(<<0xDC, n::16, r::bits>>, d), do: array(n, r, d + 1, [])
  defp value(<<0xDD, n::32, r::bits>>, d), do: array(n, r, d + 1, [])
  defp value(<<0b1000::4, n::4, r::bits>>, d), do: map(n, r, d + 1, [])
  defp value(<<0xDE, n::16, r::bits>>, d), do: map(n, r, d + 1, [])
  defp value(<<0xDF, n::32, r::bits>>, d), do: map(n, r, d + 1, [])
  defp value(<<0xC1, _::bits>>, _), do: throw({:decode, {:invalid_byte, 0xC1}})
  defp value(_, _), do: throw({:decode, :truncated})

  defp negfix(<<i::signed-8, r::bits>>), do: {i, r}

  defp str(n, r) do
    case r do
      <<s::binary-size(n), rest::bits>> ->
        if String.valid?(s), do: {s, rest}, else: throw({:decode, :invalid_utf8})

      _ ->
        throw({:decode, :truncated})
    end
  end

  defp bin(n, r) do
    case r do
      <<b::binary-size(n), rest::bits>> -> {%Bin{data: :binary.copy(b)}, rest}
      _ -> throw({:decode, :truncated})
    end
  end

  defp ext(n, t, r) do
    case r do
      <<b::binary-size(n), rest::bits>> -> {%Ext{type: t, data: :binary.copy(b)}, rest}
      _ -> throw({:decode, :truncated})
    end
  end

  # Each element needs at least one byte, so a count larger than what is left
  # is truncated input: checking first avoids huge loops on hostile headers.
  defp array(n, r, _d, _acc) when n > byte_size(r), do: throw({:decode, :truncated})
  defp array(0, r, _d, acc), do: {:lists.reverse(acc), r}

  defp array(n, r, d, acc) do
    {v, r} = value(r, d)
    array(n - 1, r, d, [v | acc])
  end

  defp map(n, r, _d, _acc) when 2 * n > byte_size(r), do: throw({:decode, :truncated})
  defp map(0, r, _d, acc), do: {:maps.from_list(:lists.reverse(acc)), r}

  defp map(n, r, d, acc) do
    {k, r} = value(r, d)
    {v, r} = value(r, d)
    map(n - 1, r, d, [{k, v} | acc])
  end

  defp float32(<<f::float-32>>), do: f
  defp float32(<<0::1, 0xFF, 0::23>>), do: :infinity
  defp float32(<<1::1, 0xFF, 0::23>>), do: :neg_infinity
  defp float32(<<_::1, 0xFF, _::23>>), do: :nan

  defp float64(<<f::float-64>>), do: f
  defp float64(<<0::1, 0x7FF::11, 0::52>>), do: :infinity
  defp float64(<<1::1, 0x7FF::11, 0::52>>), do: :neg_infinity
  defp float64(<<_::1, 0x7FF::11, _::52>>), do: :nan
end
