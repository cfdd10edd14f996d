defmodule DSPyBridge.Args do
  @moduledoc false
  # Arguments as the wire wants them: keyword lists become maps, atom keys
  # strings (used by DSPyBridge and by DSPyBridge.Pool for its default LM).

  # Turns an LM given as a model string, keyword list or map into the
  # `configure_lm` arguments (string keys).
  @spec lm_args(String.t() | keyword() | map()) :: map()
  def lm_args(model) when is_binary(model), do: %{"model" => model}
  def lm_args(lm), do: normalize(lm)

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
