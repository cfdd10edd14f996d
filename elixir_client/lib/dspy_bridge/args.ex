defmodule DSPyBridge.Args do
  @moduledoc false
  # Arguments as the wire wants them: keyword lists become maps, atom keys
  # strings (used by DSPyBridge and by DSPyBridge.Pool for its default LM).

  # Turns an LM given as a model string, keyword list or map into the
  # `configure_lm` arguments (string keys).
  @spec lm_args(String.t() | keyword() | map()) :: map()
  # The DSPex form's `provider` may be an atom (`provider: :openai`): sent as its name.
  def lm_args(model) when is_binary(model), do: %{"model" => model}

  def lm_args(lm) do
    case normalize(lm) do
      %{"provider" => p} = lm when is_atom(p) and p not in [nil, true, false] ->
        %{lm | "provider" => Atom.to_string(p)}

      lm ->
        lm
    end
  end

  # The DSPex form's `lm_config` is `lm` (the worker takes either, not both).
  def lm_config_as_lm(%{"lm_config" => lm} = args) when not is_map_key(args, "lm"),
    do: args |> Map.delete("lm_config") |> Map.put("lm", lm)

  def lm_config_as_lm(args), do: args

  # Keyword lists become maps and atom keys strings, recursively.
  def normalize(%DSPyBridge.MsgPack.Bin{} = bin), do: bin
  def normalize(%DSPyBridge.MsgPack.Ext{} = ext), do: ext

  def normalize(%{} = map) when not is_struct(map),
    do: Map.new(map, fn {k, v} -> {key(k), normalize(v)} end)

  def normalize([{k, _} | _] = list) when is_atom(k) do
    if Keyword.keyword?(list),
      do: Map.new(list, fn {k, v} -> {Atom.to_string(k), normalize(v)} end),
      else: Enum.map(list, &normalize/1)
  end

  def normalize(list) when is_list(list), do: Enum.map(list, &normalize/1)
  def normalize(other), do: other

  defp key(k) when is_atom(k) and k not in [nil, true, false], do: Atom.to_string(k)
  defp key(k), do: k
end
