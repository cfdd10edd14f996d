defmodule DSPyBridge.Worker.Memory do
  @moduledoc false
  # The resident memory (RSS) of an OS process, read from Linux's procfs for
  # the `:max_memory_mb` recycling limit.
  # `/proc/<pid>/status` gives VmRSS in kB, so no page size is needed (which
  # `/proc/<pid>/statm` counts in and the BEAM cannot ask for without
  # spawning `getconf`); reading it is one small file read, no OS process.

  @doc """
  Whether this system has a procfs to read RSS from: the BEAM's own
  `/proc/self/status` is readable and has a VmRSS line.
  """
  @spec supported?() :: boolean()
  def supported?, do: match?({:ok, _}, read_status("self"))

  @doc """
  The resident memory of OS process `os_pid`, in kB (1024 bytes), or
  `:error` when it cannot be read: no procfs, no such process (it has
  exited), or a zombie, whose status has no VmRSS line.
  """
  @spec rss_kb(non_neg_integer()) :: {:ok, non_neg_integer()} | :error
  def rss_kb(os_pid), do: read_status(Integer.to_string(os_pid))

  @doc """
  The VmRSS of the text of a `/proc/<pid>/status` file, in kB, or `:error`
  when it has no well-formed VmRSS line.

      iex> DSPyBridge.Worker.Memory.parse_status("Name:\\tpython3\\nVmRSS:\\t   51234 kB\\n")
      {:ok, 51234}
  """
  @spec parse_status(String.t()) :: {:ok, non_neg_integer()} | :error
  def parse_status(status) do
    case Regex.run(~r/^VmRSS:\s*(\d+) kB$/m, status, capture: :all_but_first) do
      [kb] -> {:ok, String.to_integer(kb)}
      nil -> :error
    end
  end

  defp read_status(pid) do
    case File.read("/proc/#{pid}/status") do
      {:ok, status} -> parse_status(status)
      {:error, _reason} -> :error
    end
  end
end
