defmodule DSPyBridge.Cluster.Rendezvous do
  @moduledoc false
  # Rendezvous (highest-random-weight) hashing, without I/O: a session is
  # owned by the worker key whose weight for it is highest. Each key's
  # weight depends only on the session and that key, so when a key leaves
  # only the sessions it owned move (each to its runner-up), and when a key
  # joins it takes only the sessions for which it now weighs most: about
  # 1/n of them, from every other key alike.

  @typedoc "A worker of a clustered pool: `{node, index}`."
  @type key :: {node(), non_neg_integer()}

  @doc """
  The weight of `key` for `session`: the first 64 bits of the MD5 of a
  byte string made of both (the same on every node and OTP release; MD5 is
  used as a well-mixed hash here, not for security).
  """
  @spec weight(String.t(), key()) :: non_neg_integer()
  def weight(session, {node, index}) when is_binary(session) and is_atom(node) do
    <<weight::64, _::64>> =
      :erlang.md5([session, 0, Atom.to_string(node), 0, Integer.to_string(index)])

    weight
  end

  @doc "The key owning `session` among `keys` (`nil` when there is none); ties go to the larger key."
  @spec owner(String.t(), [key()]) :: key() | nil
  def owner(_session, []), do: nil

  def owner(session, keys) do
    keys
    |> Enum.max_by(fn key -> {weight(session, key), key} end)
  end

  @doc "The keys of `session` in hash order: its owner first, then who would own it next."
  @spec ranked(String.t(), [key()]) :: [key()]
  def ranked(session, keys),
    do: Enum.sort_by(keys, fn key -> {weight(session, key), key} end, :desc)

  @doc "`%{key => [session]}`: the sessions each key owns (keys owning none are absent)."
  @spec assign([String.t()], [key()]) :: %{key() => [String.t()]}
  def assign(_sessions, []), do: %{}
  def assign(sessions, keys), do: Enum.group_by(sessions, &owner(&1, keys))

  @doc """
  The sessions whose owner differs between `old_keys` and `new_keys`:
  `[{session, old_owner, new_owner}]` (an owner is `nil` when there are no keys).
  """
  @spec moves([String.t()], [key()], [key()]) :: [{String.t(), key() | nil, key() | nil}]
  def moves(sessions, old_keys, new_keys) do
    Enum.flat_map(sessions, fn session ->
      case {owner(session, old_keys), owner(session, new_keys)} do
        {same, same} -> []
        {old, new} -> [{session, old, new}]
      end
    end)
  end
end
