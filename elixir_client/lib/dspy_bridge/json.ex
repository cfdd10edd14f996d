defmodule DSPyBridge.JSON do
  @moduledoc false
  # A small JSON decoder, for the worker's JSON log lines (read beside each worker)
  # and the tests: Elixir 1.14 and OTP 25 have no JSON module (OTP 27's :json would
  # do) and the client takes no hex dependencies. Numbers with a `.` or an exponent
  # become floats, others integers; objects become maps with string keys. Python's
  # `NaN`/`Infinity` and a lone surrogate escape are not JSON: they fail the decode.

  @doc "The value of `text`: `{:ok, term}`, or `:error` when it is not one JSON value."
  @spec decode(String.t()) :: {:ok, term()} | :error
  def decode(text) do
    {:ok, decode!(text)}
  rescue
    _ in [ArgumentError, MatchError, CaseClauseError, FunctionClauseError] -> :error
  end

  @doc "The value of `text`; raises when it is not one JSON value."
  @spec decode!(String.t()) :: term()
  def decode!(text) do
    {value, rest} = value(skip_ws(text))

    case skip_ws(rest) do
      "" -> value
      other -> raise ArgumentError, "trailing JSON: #{String.slice(other, 0, 20)}"
    end
  end

  defp skip_ws(<<c, rest::binary>>) when c in [?\s, ?\t, ?\n, ?\r], do: skip_ws(rest)
  defp skip_ws(text), do: text

  defp value("null" <> r), do: {nil, r}
  defp value("true" <> r), do: {true, r}
  defp value("false" <> r), do: {false, r}
  defp value("\"" <> r), do: string(r, [])
  defp value("[" <> r), do: array(skip_ws(r), [])
  defp value("{" <> r), do: object(skip_ws(r), %{})
  defp value(<<c, _::binary>> = r) when c in ?0..?9 or c == ?-, do: number(r)
  defp value(other), do: raise(ArgumentError, "bad JSON at: #{String.slice(other, 0, 20)}")

  defp array("]" <> r, acc), do: {Enum.reverse(acc), r}

  defp array(r, acc) do
    {v, r} = value(r)

    case skip_ws(r) do
      "," <> r -> array(skip_ws(r), [v | acc])
      "]" <> r -> {Enum.reverse([v | acc]), r}
    end
  end

  defp object("}" <> r, acc), do: {acc, r}

  defp object("\"" <> r, acc) do
    {k, r} = string(r, [])
    ":" <> r = skip_ws(r)
    {v, r} = value(skip_ws(r))
    acc = Map.put(acc, k, v)

    case skip_ws(r) do
      "," <> r -> object(skip_ws(r), acc)
      "}" <> r -> {acc, r}
    end
  end

  defp string("\"" <> r, acc), do: {IO.iodata_to_binary(Enum.reverse(acc)), r}
  defp string("\\\"" <> r, acc), do: string(r, ["\"" | acc])
  defp string("\\\\" <> r, acc), do: string(r, ["\\" | acc])
  defp string("\\/" <> r, acc), do: string(r, ["/" | acc])
  defp string("\\b" <> r, acc), do: string(r, ["\b" | acc])
  defp string("\\f" <> r, acc), do: string(r, ["\f" | acc])
  defp string("\\n" <> r, acc), do: string(r, ["\n" | acc])
  defp string("\\r" <> r, acc), do: string(r, ["\r" | acc])
  defp string("\\t" <> r, acc), do: string(r, ["\t" | acc])

  defp string(<<"\\u", hex::binary-4, r::binary>>, acc) do
    case {String.to_integer(hex, 16), r} do
      {hi, <<"\\u", lo::binary-4, r::binary>>} when hi in 0xD800..0xDBFF ->
        lo = String.to_integer(lo, 16)
        true = lo in 0xDC00..0xDFFF
        cp = 0x10000 + (hi - 0xD800) * 0x400 + (lo - 0xDC00)
        string(r, [<<cp::utf8>> | acc])

      {cp, r} ->
        # a lone surrogate is no character: <<cp::utf8>> raises
        string(r, [<<cp::utf8>> | acc])
    end
  end

  defp string(text, acc) do
    case :binary.match(text, ["\"", "\\"]) do
      {0, _} -> raise ArgumentError, "bad JSON string at: #{String.slice(text, 0, 20)}"
      {at, _} -> plain(binary_part(text, 0, at), binary_part(text, at, byte_size(text) - at), acc)
      :nomatch -> raise ArgumentError, "unterminated JSON string"
    end
  end

  defp plain(run, rest, acc) do
    if String.valid?(run), do: string(rest, [run | acc]), else: raise(ArgumentError, "not UTF-8")
  end

  defp number(text) do
    {num, rest} = take_number(text, [])
    num = IO.iodata_to_binary(num)

    if String.contains?(num, [".", "e", "E"]) do
      {float!(num), rest}
    else
      {String.to_integer(num), rest}
    end
  end

  defp take_number(<<c, r::binary>>, acc) when c in ?0..?9 or c in [?-, ?+, ?., ?e, ?E],
    do: take_number(r, [acc, c])

  defp take_number(r, acc), do: {acc, r}

  defp float!(num) do
    # Elixir's Float.parse wants digits after the dot and before an exponent.
    num = String.replace(num, ~r/\.(?=[eE]|$)/, ".0")
    num = if String.contains?(num, "."), do: num, else: String.replace(num, ~r/[eE]/, ".0e")
    {f, ""} = Float.parse(num)
    f
  end
end
