defmodule DSPyBridge.Test.JSON do
  @moduledoc """
  A tiny JSON decoder for the tests (Elixir 1.14 has no JSON module and the
  client has no dependencies). Numbers with a `.` or an exponent become
  floats, others integers. Objects become maps.
  """

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

  defp string(<<"\\u", a::binary-4, "\\u", b::binary-4, r::binary>>, acc)
       when a >= "D800" and a <= "DBFF" do
    hi = String.to_integer(a, 16)
    lo = String.to_integer(b, 16)
    cp = 0x10000 + (hi - 0xD800) * 0x400 + (lo - 0xDC00)
    string(r, [<<cp::utf8>> | acc])
  end

  defp string(<<"\\u", a::binary-4, r::binary>>, acc),
    do: string(r, [<<String.to_integer(a, 16)::utf8>> | acc])

  defp string(<<c::utf8, r::binary>>, acc), do: string(r, [<<c::utf8>> | acc])

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
