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

  defp replay(path) do
    worker = Command.resolve([])

    System.cmd(worker.python, ["-P", "-m", "dspy_bridge", "replay", path],
      cd: Command.repo_root(),
      stderr_to_stdout: true
    )
  end
end
