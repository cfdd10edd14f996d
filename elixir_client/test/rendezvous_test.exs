defmodule DSPyBridge.Cluster.RendezvousTest do
  # The pure ownership function: no processes, no nodes.
  use ExUnit.Case, async: true

  alias DSPyBridge.Cluster.Rendezvous

  @sessions for i <- 1..6_000, do: "session-#{i}"

  defp keys(nodes, per_node),
    do: for(node <- nodes, index <- 0..(per_node - 1), do: {node, index})

  test "the owner is stable: the same keys in any order give the same owner" do
    keys = keys([:"a@127.0.0.1", :"b@127.0.0.1", :"c@127.0.0.1"], 2)

    for session <- Enum.take(@sessions, 500) do
      owner = Rendezvous.owner(session, keys)
      assert owner in keys
      assert Rendezvous.owner(session, Enum.shuffle(keys)) == owner
      assert hd(Rendezvous.ranked(session, keys)) == owner
    end

    assert Rendezvous.owner("s", []) == nil
  end

  test "sessions spread over the keys in proportion (each key about 1/n)" do
    keys = keys([:"a@127.0.0.1", :"b@127.0.0.1", :"c@127.0.0.1"], 2)
    counts = @sessions |> Rendezvous.assign(keys) |> Map.new(fn {k, s} -> {k, length(s)} end)
    assert map_size(counts) == 6
    expected = length(@sessions) / 6

    for {key, count} <- counts,
        do: assert(abs(count - expected) < 0.12 * expected, "#{inspect(key)}: #{count}")
  end

  test "when a worker leaves, only its sessions move, each to its runner-up" do
    keys = keys([:"a@127.0.0.1", :"b@127.0.0.1", :"c@127.0.0.1"], 2)
    gone = {:"b@127.0.0.1", 1}
    moves = Rendezvous.moves(@sessions, keys, keys -- [gone])
    owned_by_gone = @sessions |> Rendezvous.assign(keys) |> Map.fetch!(gone)

    assert Enum.sort(for {s, _, _} <- moves, do: s) == Enum.sort(owned_by_gone)

    for {session, ^gone, new} <- moves,
        do: assert(new == Enum.at(Rendezvous.ranked(session, keys), 1))

    assert Enum.all?(moves, &match?({_, ^gone, _}, &1))
  end

  test "when a node joins, only the sessions it now owns move, about its share" do
    old = keys([:"a@127.0.0.1", :"b@127.0.0.1"], 2)
    joiner = keys([:"c@127.0.0.1"], 2)
    new = old ++ joiner
    moves = Rendezvous.moves(@sessions, old, new)

    # every move goes to the joiner, and the joiner gets nothing else
    assert Enum.all?(moves, fn {_, from, to} -> from in old and to in joiner end)
    predicted = @sessions |> Enum.count(&(Rendezvous.owner(&1, new) in joiner))
    assert length(moves) == predicted

    # its share: 2 of 6 workers
    share = length(@sessions) * 2 / 6
    assert abs(predicted - share) < 0.1 * share

    # taken from every old worker alike
    taken = moves |> Enum.frequencies_by(fn {_, from, _} -> from end)
    assert map_size(taken) == 4
    for {_, n} <- taken, do: assert(abs(n - share / 4) < 0.2 * share / 4)
  end

  test "a member joined n times is the keys {node, 0} .. {node, n - 1}" do
    member = self()
    assert DSPyBridge.Cluster.keys_of([member, member, member]) == for(i <- 0..2, do: {node(), i})
    assert DSPyBridge.Cluster.keys_of([]) == []
  end

  test "a call's arguments over 64 MiB are refused before they are sent" do
    big = :binary.copy(<<0>>, 64 * 1024 * 1024 + 1)

    assert {:error, %DSPyBridge.Error{type: :limit_exceeded, details: details}} =
             DSPyBridge.Cluster.Remote.remote_call(
               :"nowhere@127.0.0.1",
               {:erlang, :node, [big]},
               1_000,
               "echo"
             )

    assert details["limit"] == "max_remote_bytes"
  end

  test "weights are deterministic and differ by key" do
    assert Rendezvous.weight("s", {:a@h, 0}) == Rendezvous.weight("s", {:a@h, 0})
    refute Rendezvous.weight("s", {:a@h, 0}) == Rendezvous.weight("s", {:a@h, 1})
  end
end
