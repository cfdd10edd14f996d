defmodule DSPyBridge.ReadmeTest do
  # The README's quick start, run as pasted: the block after its marker is
  # evaluated as it stands (a real pool, real workers, the mock LM, offline),
  # and what it prints is what the README says it prints. The repository's
  # README carries the same block, checked to be identical.
  use ExUnit.Case, async: false

  import ExUnit.CaptureIO

  alias DSPyBridge.Command

  @moduletag :dspy
  @marker "<!-- quickstart: run by test/readme_test.exs -->"

  defp quick_start(path) do
    [_, after_marker] = path |> File.read!() |> String.split(@marker <> "\n", parts: 2)
    [_, code] = Regex.run(~r/\A```elixir\n(.*?)\n```/s, after_marker)
    code
  end

  test "the quick start runs as pasted and prints what it says" do
    code = quick_start(Path.expand("../README.md", __DIR__))
    [expected] = Regex.run(~r/^# (.+)\z/m, code, capture: :all_but_first)

    output =
      capture_io(fn ->
        Code.eval_string(code)
        # the pool the block started (its name is the README's)
        DSPyBridge.Pool.stop(MyApp.DSPy)
      end)

    assert output == expected <> "\n"
  end

  test "the repository's README shows the same quick start" do
    assert quick_start(Path.join(Command.repo_root(), "README.md")) ==
             quick_start(Path.expand("../README.md", __DIR__))
  end
end
