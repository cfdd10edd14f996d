defmodule DSPyBridge.MsgPackTest do
  use ExUnit.Case, async: true

  alias DSPyBridge.MsgPack
  alias DSPyBridge.MsgPack.{Bin, Ext}
  alias DSPyBridge.JSON

  doctest DSPyBridge.MsgPack

  @vectors_path Path.expand("../../protocol/vectors/vectors.json", __DIR__)

  # -- golden vectors ---------------------------------------------------------

  describe "protocol/vectors" do
    setup do
      vectors = @vectors_path |> File.read!() |> JSON.decode!()
      assert is_list(vectors) and vectors != []
      %{vectors: vectors}
    end

    test "every vector decodes to its value", %{vectors: vectors} do
      for v <- vectors do
        bytes = Base.decode16!(v["hex"], case: :mixed)

        assert MsgPack.decode(bytes) == {:ok, from_json(v["value"])},
               "vector #{v["name"]} did not decode to its value"
      end
    end

    test "every vector's frame is the {:packet, 4} framing of its bytes", %{vectors: vectors} do
      for %{"frame_hex" => frame_hex, "hex" => hex} = v <- vectors do
        bytes = Base.decode16!(hex, case: :mixed)

        assert Base.decode16!(frame_hex, case: :mixed) == <<byte_size(bytes)::32, bytes::binary>>,
               "vector #{v["name"]}"
      end
    end

    test "encoding reproduces the vectors' bytes", %{vectors: vectors} do
      for v <- vectors, not Map.get(v, "decode_only", false) do
        expected = Base.decode16!(v["hex"], case: :mixed)
        value = from_json(v["value"])
        {:ok, encoded} = MsgPack.encode(value)

        if multi_key_map?(value) do
          # Elixir maps do not keep insertion order, so only the key order of
          # maps can differ: same size, same value.
          assert byte_size(encoded) == byte_size(expected), "vector #{v["name"]}"
          assert MsgPack.decode(encoded) == {:ok, value}, "vector #{v["name"]}"
        else
          assert encoded == expected, "vector #{v["name"]}"
        end
      end
    end
  end

  # JSON form of the vectors: bin as {"$bin": base64}, ext as {"$ext": {type, data}}.
  defp from_json(%{"$bin" => b64}), do: %Bin{data: Base.decode64!(b64)}

  defp from_json(%{"$ext" => %{"type" => t, "data" => b64}}),
    do: %Ext{type: t, data: Base.decode64!(b64)}

  defp from_json(%{} = m), do: Map.new(m, fn {k, v} -> {k, from_json(v)} end)
  defp from_json(l) when is_list(l), do: Enum.map(l, &from_json/1)
  defp from_json(x), do: x

  defp multi_key_map?(%{} = m) when not is_struct(m),
    do: map_size(m) > 1 or Enum.any?(m, fn {k, v} -> multi_key_map?(k) or multi_key_map?(v) end)

  defp multi_key_map?(l) when is_list(l), do: Enum.any?(l, &multi_key_map?/1)
  defp multi_key_map?(_), do: false

  # -- format details -----------------------------------------------------------

  test "integers use the smallest encoding at every width boundary" do
    cases = [
      {0, 1},
      {127, 1},
      {128, 2},
      {255, 2},
      {256, 3},
      {65_535, 3},
      {65_536, 5},
      {4_294_967_295, 5},
      {4_294_967_296, 9},
      {18_446_744_073_709_551_615, 9},
      {-1, 1},
      {-32, 1},
      {-33, 2},
      {-128, 2},
      {-129, 3},
      {-32_768, 3},
      {-32_769, 5},
      {-2_147_483_648, 5},
      {-2_147_483_649, 9},
      {-9_223_372_036_854_775_808, 9}
    ]

    for {i, size} <- cases do
      {:ok, bin} = MsgPack.encode(i)
      assert byte_size(bin) == size, "#{i} encoded in #{byte_size(bin)} bytes"
      assert MsgPack.decode(bin) == {:ok, i}
    end

    assert {:error, {:unencodable, _}} = MsgPack.encode(18_446_744_073_709_551_616)
    assert {:error, {:unencodable, _}} = MsgPack.encode(-9_223_372_036_854_775_809)
  end

  test "str, bin, array and map headers switch size class at the boundaries" do
    for {n, header} <- [{31, 1}, {32, 2}, {255, 2}, {256, 3}, {65_535, 3}, {65_536, 5}] do
      s = String.duplicate("x", n)
      assert byte_size(MsgPack.encode!(s)) == n + header
      assert byte_size(MsgPack.encode!(%Bin{data: s})) == n + max(header, 2)
    end

    for {n, header} <- [{15, 1}, {16, 3}, {65_535, 3}, {65_536, 5}] do
      list = List.duplicate(nil, n)
      assert byte_size(MsgPack.encode!(list)) == n + header
      assert MsgPack.decode!(MsgPack.encode!(list)) == list

      map = Map.new(1..n, &{&1, nil})
      assert MsgPack.decode!(MsgPack.encode!(map)) == map
    end
  end

  test "ext uses fixext for 1/2/4/8/16 bytes and ext 8/16/32 otherwise" do
    for {n, header} <- [
          {1, 2},
          {2, 2},
          {4, 2},
          {8, 2},
          {16, 2},
          {0, 3},
          {3, 3},
          {255, 3},
          {256, 4},
          {65_536, 6}
        ] do
      ext = %Ext{type: -5, data: :binary.copy(<<7>>, n)}
      bin = MsgPack.encode!(ext)
      assert byte_size(bin) == n + header, "ext of #{n} bytes"
      assert MsgPack.decode!(bin) == ext
    end
  end

  test "floats: 64-bit encoding, 32-bit decoding, NaN and infinities" do
    assert MsgPack.encode!(1.5) == <<0xCB, 1.5::float-64>>
    assert MsgPack.decode!(<<0xCA, 0.25::float-32>>) == 0.25
    assert MsgPack.decode!(<<0xCA, 0x7FC00000::32>>) == :nan
    assert MsgPack.decode!(<<0xCA, 0x7F800000::32>>) == :infinity
    assert MsgPack.decode!(<<0xCA, 0xFF800000::32>>) == :neg_infinity

    for special <- [:nan, :infinity, :neg_infinity] do
      assert MsgPack.decode!(MsgPack.encode!(special)) == special
    end
  end

  test "str and bin stay distinct; atoms encode as str; bad input is refused" do
    assert MsgPack.encode!("ab") == <<0xA2, "ab">>
    assert MsgPack.encode!(%Bin{data: "ab"}) == <<0xC4, 2, "ab">>
    assert MsgPack.decode!(<<0xA2, "ab">>) == "ab"
    assert MsgPack.decode!(<<0xC4, 2, "ab">>) == %Bin{data: "ab"}
    assert MsgPack.decode!(MsgPack.encode!(%{key: :value})) == %{"key" => "value"}
    assert {:error, {:unencodable, <<255>>}} = MsgPack.encode(<<255>>)
    assert {:error, {:unencodable, {1, 2}}} = MsgPack.encode([{1, 2}])
    assert {:error, {:unencodable, _}} = MsgPack.encode(self())
    assert MsgPack.decode(<<0xA1, 255>>) == {:error, :invalid_utf8}
    assert MsgPack.decode(<<0xC1>>) == {:error, {:invalid_byte, 0xC1}}
    assert MsgPack.decode(<<0xC0, 0xC0>>) == {:error, :trailing_bytes}
    assert MsgPack.decode(<<0xDD, 0xFFFFFFFF::32>>) == {:error, :truncated}
    assert MsgPack.decode(<<>>) == {:error, :truncated}
    assert MsgPack.decode(:binary.copy(<<0x91>>, 10_000) <> <<0xC0>>) == {:error, :max_depth}
  end

  # -- properties (ExUnit only: a seeded generator, many iterations) --------------

  @iterations 1_500

  test "property: random terms round-trip" do
    for _ <- 1..@iterations do
      term = gen_term(4)
      {:ok, bin} = MsgPack.encode(term)
      assert MsgPack.decode(bin) == {:ok, term}, "round trip failed for #{inspect(term)}"
    end
  end

  test "property: every strict prefix of an encoding is truncated input" do
    for _ <- 1..300 do
      bin = MsgPack.encode!(gen_term(3))

      for cut <- Enum.uniq([0, div(byte_size(bin), 2), byte_size(bin) - 1]),
          cut < byte_size(bin) do
        assert MsgPack.decode(binary_part(bin, 0, cut)) == {:error, :truncated}
      end
    end
  end

  test "property: random bytes never crash the decoder" do
    for _ <- 1..@iterations do
      bytes = :rand.bytes(:rand.uniform(40))
      assert match?({:ok, _}, MsgPack.decode(bytes)) or match?({:error, _}, MsgPack.decode(bytes))
    end
  end

  defp gen_term(0), do: gen_scalar()

  defp gen_term(depth) do
    case :rand.uniform(10) do
      n when n <= 6 ->
        gen_scalar()

      n when n <= 8 ->
        for _ <- 1..gen_len(), do: gen_term(depth - 1)

      _ ->
        Map.new(1..gen_len(), fn _ -> {gen_key(), gen_term(depth - 1)} end)
    end
  end

  defp gen_len do
    case :rand.uniform(20) do
      20 -> 16 + :rand.uniform(20)
      _ -> :rand.uniform(6) - 1
    end
  end

  defp gen_key do
    case :rand.uniform(3) do
      1 -> gen_int()
      _ -> gen_string()
    end
  end

  defp gen_scalar do
    case :rand.uniform(9) do
      1 ->
        Enum.random([nil, true, false])

      2 ->
        gen_int()

      3 ->
        gen_int()

      4 ->
        gen_float()

      5 ->
        gen_string()

      6 ->
        gen_string()

      7 ->
        %Bin{data: :rand.bytes(Enum.random([0, 1, 5, 255, 256, 70_000]))}

      8 ->
        %Ext{
          type: :rand.uniform(256) - 129,
          data: :rand.bytes(Enum.random([1, 2, 3, 4, 8, 16, 17, 300]))
        }

      9 ->
        Enum.random([:nan, :infinity, :neg_infinity, 0.0, -1.0e308, 5.0e-324])
    end
  end

  @bounds [
    0,
    127,
    128,
    255,
    256,
    65_535,
    65_536,
    4_294_967_295,
    4_294_967_296,
    18_446_744_073_709_551_615,
    -1,
    -32,
    -33,
    -128,
    -129,
    -32_768,
    -32_769,
    -2_147_483_648,
    -2_147_483_649,
    -9_223_372_036_854_775_808
  ]

  defp gen_int do
    case :rand.uniform(3) do
      1 ->
        Enum.random(@bounds)

      2 ->
        :rand.uniform(200) - 100

      3 ->
        :rand.uniform(18_446_744_073_709_551_615 + 9_223_372_036_854_775_808) -
          9_223_372_036_854_775_809
    end
  end

  defp gen_float, do: (:rand.uniform() - 0.5) * :math.pow(10, :rand.uniform(40) - 20)

  @alphabet ~c"abcxyz019 _-" ++ [?é, ?✓, 0x65E5, 0x1F600, 0]

  defp gen_string do
    len = Enum.random([0, 1, 5, 31, 32, 100, 255, 256, 300])
    for _ <- 1..len//1, into: "", do: <<Enum.random(@alphabet)::utf8>>
  end
end
