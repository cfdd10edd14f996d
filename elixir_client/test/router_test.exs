defmodule DSPyBridge.Pool.RouterTest do
  use ExUnit.Case, async: true

  alias DSPyBridge.Pool.Router

  test "index_for/2 is phash2 of the session id" do
    for s <- ["a", "tenant-42", ""], size <- [1, 3, 8] do
      assert Router.index_for(s, size) == :erlang.phash2(s, size)
    end
  end

  describe "route/4" do
    test "an explicit worker index wins, and the candidates are not read" do
      no_read = fn -> flunk("candidates read") end
      assert Router.route(2, "s", 4, no_read) == 2
    end

    test "a session goes to its worker" do
      no_read = fn -> flunk("candidates read") end
      assert Router.route(nil, "tenant-42", 4, no_read) == Router.index_for("tenant-42", 4)
    end

    test "a pool of one needs no candidates" do
      assert Router.route(nil, nil, 1, fn -> flunk("candidates read") end) == 0
    end

    test "without a session: the least-loaded ready worker" do
      candidates = [{0, true, 3}, {1, true, 1}, {2, false, 0}, {3, true, 2}]
      assert Router.route(nil, nil, 4, fn -> candidates end) == 1
    end
  end

  describe "least_loaded/1" do
    test "ready workers come first, whatever their load" do
      assert Router.least_loaded([{0, false, 0}, {1, true, 50}]) == 1
    end

    test "with no ready worker, the least loaded of the others" do
      assert Router.least_loaded([{0, false, 4}, {1, false, 2}]) == 1
    end

    test "a negative load counts as 0" do
      picks =
        for _ <- 1..50, into: MapSet.new(), do: Router.least_loaded([{0, true, -3}, {1, true, 0}])

      assert MapSet.subset?(picks, MapSet.new([0, 1]))
    end

    test "ties are broken at random among the equals only" do
      candidates = [{0, true, 1}, {1, true, 0}, {2, true, 0}, {3, false, 0}]
      picks = for _ <- 1..200, into: MapSet.new(), do: Router.least_loaded(candidates)
      assert picks == MapSet.new([1, 2])
    end
  end
end
