defmodule DSPyBridge.Worker.RequestsTest do
  use ExUnit.Case, async: true

  alias DSPyBridge.Worker.Requests

  defp queue(t, reqs) do
    Enum.reduce(reqs, {[], t}, fn req, {ids, t} ->
      {id, t} = Requests.new_id(t)
      {ids ++ [id], Requests.put(t, id, {:queued, req})}
    end)
  end

  test "wire ids are fresh and increasing" do
    {a, t} = Requests.new_id(Requests.new())
    {b, t} = Requests.new_id(t)
    {c, _} = Requests.new_id(t)
    assert [a, b, c] == [0, 1, 2]
  end

  test "the counts follow each entry's phase" do
    t = Requests.new()
    {[q], t} = queue(t, [:q])
    t = t |> Requests.put(10, {:in_flight, :r}) |> Requests.put(11, {:abandoned, "sleep"})
    t = Requests.put(t, 12, {:internal, :cancel})
    assert {t.in_flight, t.queued} == {1, 1}

    assert {{:queued, :q}, t} = Requests.pop(t, q)
    assert {{:abandoned, "sleep"}, t} = Requests.pop(t, 11)
    assert {{:internal, :cancel}, t} = Requests.pop(t, 12)
    assert {t.in_flight, t.queued} == {1, 0}
    assert {{:in_flight, :r}, t} = Requests.pop(t, 10)
    assert {t.in_flight, t.queued} == {0, 0}
    assert t.entries == %{}
  end

  test "popping an unknown id changes nothing" do
    t = Requests.put(Requests.new(), 1, {:in_flight, :r})
    assert Requests.pop(t, 2) == {nil, t}
    assert Requests.pop(t, nil) == {nil, t}
  end

  test "the queue is FIFO, keeps the ids, and skips what left it (timed out)" do
    {[a, b, c], t} = queue(Requests.new(), [:a, :b, :c])
    # b timed out while queued
    {{:queued, :b}, t} = Requests.pop(t, b)
    assert t.queued == 2

    assert {:ok, ^a, :a, t} = Requests.dequeue(t)
    assert {:ok, ^c, :c, t} = Requests.dequeue(t)
    assert Requests.dequeue(t) == :empty
    assert t.queued == 0
    assert t.entries == %{}
  end

  test "dequeuing takes the entry out of the table, to be put back in flight" do
    {[a], t} = queue(Requests.new(), [:a])
    {:ok, ^a, :a, t} = Requests.dequeue(t)
    refute Map.has_key?(t.entries, a)
    t = Requests.put(t, a, {:in_flight, :a})
    assert {t.in_flight, t.queued} == {1, 0}
  end

  test "room?/2 bounds what is in flight" do
    t = Requests.new()
    assert Requests.room?(t, 1)
    t = Requests.put(t, 0, {:in_flight, :r})
    refute Requests.room?(t, 1)
    assert Requests.room?(t, 2)
    # queued, abandoned and internal entries take no room
    {_, t} = queue(t, [:q])
    t = t |> Requests.put(5, {:abandoned, "x"}) |> Requests.put(6, {:internal, :replay})
    assert Requests.room?(t, 2)
  end

  test "take_callers/1 takes queued and in-flight requests, leaving the rest" do
    {_, t} = queue(Requests.new(), [:q1, :q2])
    t = t |> Requests.put(10, {:in_flight, :r}) |> Requests.put(11, {:abandoned, "sleep"})
    t = Requests.put(t, 12, {:internal, :shutdown})

    {callers, t} = Requests.take_callers(t)
    assert Enum.sort(callers) == [:q1, :q2, :r]
    assert t.entries == %{11 => {:abandoned, "sleep"}, 12 => {:internal, :shutdown}}
    assert {t.in_flight, t.queued} == {0, 0}
    assert Requests.dequeue(t) == :empty
  end
end
