defmodule DSPyBridge.Test.Helpers do
  @moduledoc "Helpers shared by the tests (real workers, real ports, real OS pids)."

  import ExUnit.Assertions

  @doc "Is an OS process with this pid running (a zombie counts as gone)?"
  @spec os_alive?(non_neg_integer()) :: boolean()
  def os_alive?(os_pid) do
    case File.read("/proc/#{os_pid}/stat") do
      {:ok, stat} ->
        # "pid (comm) state ..." — comm may contain spaces, the state follows the last ')'
        rest = stat |> String.split(")") |> List.last()
        not String.starts_with?(String.trim_leading(rest), ["Z", "X"])

      {:error, _} ->
        false
    end
  end

  @doc """
  Waits for an OS process we do not own (so cannot be notified about) to
  disappear, checking every 20 ms up to `timeout` ms. Returns how long it took.
  """
  @spec await_os_exit(non_neg_integer(), non_neg_integer()) :: non_neg_integer()
  def await_os_exit(os_pid, timeout \\ 3_000) do
    started = System.monotonic_time(:millisecond)
    do_await_os_exit(os_pid, started, started + timeout)
  end

  defp do_await_os_exit(os_pid, started, deadline) do
    now = System.monotonic_time(:millisecond)

    cond do
      not os_alive?(os_pid) ->
        now - started

      now > deadline ->
        flunk("OS process #{os_pid} still alive after #{deadline - started} ms")

      true ->
        Process.sleep(20)
        do_await_os_exit(os_pid, started, deadline)
    end
  end

  @doc "kill -9 an OS process."
  @spec kill9(non_neg_integer()) :: :ok
  def kill9(os_pid) do
    {_, 0} = System.cmd("kill", ["-9", Integer.to_string(os_pid)])
    :ok
  end

  @doc "A unique pool name for a test."
  @spec pool_name(String.t()) :: atom()
  def pool_name(prefix \\ "pool"),
    do: :"DSPyBridge.TestPool.#{prefix}#{System.unique_integer([:positive])}"

  @doc "Options for workers with test commands enabled, quiet logs and no network."
  @spec worker_opts(keyword()) :: keyword()
  def worker_opts(extra \\ []) do
    # No test may reach the network (the mock LM needs none; this keeps
    # litellm from trying to fetch metadata or send telemetry).
    env = [{"LITELLM_LOCAL_MODEL_COST_MAP", "True"}, {"LITELLM_TELEMETRY", "False"}]

    Keyword.merge(
      [extra_args: ["--enable-test-commands"], log_level: "warning", env: env],
      extra
    )
  end

  @doc "Session ids that hash to worker `index` of a pool of `size`."
  @spec sessions_on(non_neg_integer(), pos_integer(), pos_integer(), String.t()) :: [String.t()]
  def sessions_on(index, size, count, prefix \\ "s") do
    Stream.iterate(0, &(&1 + 1))
    |> Stream.map(&"#{prefix}-#{&1}")
    |> Stream.filter(&(DSPyBridge.Pool.index_for(&1, size) == index))
    |> Enum.take(count)
  end
end
