defmodule DSPyBridge.RecordReplayTest do
  # Traffic driven by this client is recorded by the worker (`--record`), the recording
  # replays as-is against a fresh worker (`dspy-bridge replay`), and changing one expected
  # value makes the replay fail with a diff that points at it.
  use ExUnit.Case, async: true

  import DSPyBridge.Test.Helpers

  alias DSPyBridge.{Command, Error, Pool}

  @moduletag :dspy
  @moduletag :tmp_dir
  @moduletag timeout: 120_000

  test "a session driven through the pool records, replays, and fails once changed",
       %{tmp_dir: dir} do
    path = Path.join(dir, "session.jsonl")
    pool = pool_name("record")

    start_supervised!(
      {Pool,
       worker_opts(name: pool, size: 1, extra_args: ["--enable-test-commands", "--record", path])}
    )

    s = "recorded"
    lm = [model: "mock/rec", extra: %{responses: %{"What is 2+2?" => "4"}, default: "?"}]
    assert {:ok, _} = DSPyBridge.configure_lm(pool, lm, session: s)

    assert {:ok, %{"program_id" => "qa"}} =
             DSPyBridge.create_program(pool, [signature: "question -> answer", program_id: "qa"],
               session: s
             )

    assert {:ok, %{"outputs" => %{"answer" => "4"}}} =
             DSPyBridge.execute(pool, "qa", %{question: "What is 2+2?"}, session: s)

    assert {:error, %Error{type: :not_found}} =
             DSPyBridge.execute(pool, "missing", %{question: "x"}, session: s)

    assert {:ok, _} = DSPyBridge.get_usage(pool, session: s)
    :ok = stop_supervised!(pool)

    recording = File.read!(path)
    assert recording =~ ~s("command": "execute_program")
    assert {output, 0} = replay(path)
    assert output =~ "PASS"

    changed = Path.join(dir, "changed.jsonl")
    original = ~s({"outputs": {"answer": "4"})
    assert recording =~ original
    File.write!(changed, String.replace(recording, original, ~s({"outputs": {"answer": "5"})))
    assert {output, code} = replay(changed)
    assert code != 0
    assert output =~ "FAIL"
    assert output =~ "outputs.answer"
    assert output =~ ~s("5")
    assert output =~ ~s("4")
  end

  test "a pool records one transcript per worker, each life of a recycled worker replaying",
       %{tmp_dir: dir} do
    pool = pool_name("per_worker")
    template = Path.join(dir, "worker-{worker}.jsonl")
    # worker 0 recycles after 3 requests: its file gets a second life
    opts = worker_opts(name: pool, size: 2, transcript: template, max_requests: 3)
    start_supervised!({Pool, opts})
    lm = [model: "mock/rec", extra: %{responses: %{"Who?" => "me"}, default: "?"}]

    for index <- 0..1 do
      [s] = sessions_on(index, 2, 1, "rec#{index}")
      assert {:ok, _} = DSPyBridge.configure_lm(pool, lm, session: s)
      assert {:ok, _} = DSPyBridge.create_program(pool, "question -> answer", session: s)
    end

    [s0] = sessions_on(0, 2, 1, "rec0")
    {:ok, %{"programs" => [%{"program_id" => id}]}} = DSPyBridge.list_programs(pool, session: s0)

    for _ <- 1..3 do
      assert {:ok, %{"outputs" => %{"answer" => "me"}}} =
               DSPyBridge.execute(pool, id, %{question: "Who?"}, session: s0)
    end

    :ok = stop_supervised!(pool)

    [first, second] = for i <- 0..1, do: File.read!(Path.join(dir, "worker-#{i}.jsonl"))
    assert first =~ "rec0" and not (first =~ "rec1")
    assert second =~ "rec1" and not (second =~ "rec0")
    # two lives in worker 0's file: two headers
    assert length(String.split(first, ~s("worker_args"))) == 3

    for i <- 0..1 do
      {output, status} = replay(Path.join(dir, "worker-#{i}.jsonl"))
      assert status == 0, output
    end

    assert_raise ArgumentError, ~r/put \{worker\} in the path/, fn ->
      Pool.child_spec(worker_opts(name: pool, size: 2, transcript: Path.join(dir, "all.jsonl")))
    end
  end

  defp replay(path) do
    worker = Command.resolve([])

    System.cmd(worker.python, ["-P", "-m", "dspy_bridge", "replay", path],
      cd: Command.repo_root(),
      stderr_to_stdout: true
    )
  end
end
