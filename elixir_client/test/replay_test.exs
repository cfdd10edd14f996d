defmodule DSPyBridge.Worker.ReplayTest do
  use ExUnit.Case, async: true

  alias DSPyBridge.Worker.Replay

  defp cmds(n, prefix), do: for(i <- 1..n, do: {"#{prefix}#{i}", %{"i" => i}})

  test "nothing to replay is done at once, with a zero summary" do
    replay = Replay.new([], [[], []], 100)
    assert Replay.next(replay) == :done
    assert Replay.summary(replay, 130) == %{"commands" => 0, "failed" => 0, "duration_ms" => 30}
  end

  test "init commands come first, then the batches in order, one after another" do
    replay = Replay.new([{"configure_lm", %{}}], [cmds(2, "lm"), [], cmds(1, "p")], 0)

    assert {:send, [{"configure_lm", _}], replay} = Replay.next(replay)
    replay = Replay.sent(replay, 0, "configure_lm")
    assert Replay.pending?(replay, 0)
    assert Replay.next(replay) == :wait
    assert {:ok, replay} = Replay.answered(replay, 0, %{"success" => true})
    refute Replay.pending?(replay, 0)

    assert {:send, [{"lm1", _}, {"lm2", _}], replay} = Replay.next(replay)
    replay = replay |> Replay.sent(1, "lm1") |> Replay.sent(2, "lm2")
    assert {:ok, replay} = Replay.answered(replay, 2, %{"success" => true})
    assert Replay.next(replay) == :wait
    assert {:ok, replay} = Replay.answered(replay, 1, %{"success" => true})

    assert {:send, [{"p1", _}], replay} = Replay.next(replay)
    replay = Replay.sent(replay, 3, "p1")
    assert {:ok, replay} = Replay.answered(replay, 3, %{"success" => true})
    assert Replay.next(replay) == :done
    assert %{"commands" => 4, "failed" => 0} = Replay.summary(replay, 10)
  end

  test "a batch is split into windows of at most 64 commands" do
    replay = Replay.new([], [cmds(130, "c")], 0)
    assert {:send, first, replay} = Replay.next(replay)
    assert length(first) == 64
    assert {:send, second, replay} = Replay.next(replay)
    assert length(second) == 64
    assert {:send, [_, _], replay} = Replay.next(replay)
    assert Replay.next(replay) == :done
    assert %{"commands" => 130} = Replay.summary(replay, 0)
  end

  test "failed answers and unsent commands are counted as failed" do
    replay = Replay.new([], [cmds(3, "c")], 0)
    {:send, _, replay} = Replay.next(replay)
    replay = replay |> Replay.sent(:a, "c1") |> Replay.not_sent() |> Replay.sent(:b, "c3")

    error = %{"type" => "invalid_args"}

    assert {{:failed, "c1", ^error}, replay} =
             Replay.answered(replay, :a, %{"success" => false, "error" => error})

    assert {{:failed, "c3", %{"weird" => 1}}, replay} =
             Replay.answered(replay, :b, %{"weird" => 1})

    assert Replay.next(replay) == :done
    assert %{"commands" => 3, "failed" => 3} = Replay.summary(replay, 0)
  end

  test "pending?/2 of no replay is false" do
    refute Replay.pending?(nil, 1)
  end
end
