defmodule DSPyBridge.Worker.Stderr do
  @moduledoc false
  # One worker OS process's stderr, read on a pipe of its own beside the
  # protocol's stdin/stdout. The worker is started through /bin/sh, which opens
  # a fifo as the worker's stderr and then execs the interpreter (so the OS pid,
  # the exit status and the port are the worker's own); this process reads the
  # fifo through a `cat` port, line by line, and
  #
  #   * with `stderr: :logger` (the default) logs each of the worker's JSON
  #     lines with Logger at the line's level, with metadata `pool`, `worker`
  #     (the pool's index), `os_pid`, `worker_id`, and, for a line written
  #     while a request ran, `request_id`, `command` and `session_id`; a line
  #     that is not JSON (a C library's write, a crash before logging was set
  #     up) is logged as it is, as a warning;
  #   * with `stderr: :passthrough` writes each line to the BEAM's stderr
  #     unchanged (as the OS process's own stderr would be).
  #
  # Until the worker is ready it also keeps the first lines, which a start
  # failure quotes (see `first_lines/2`). It stops when the stream
  # ends (the OS process and anything it started have closed it), or, once its
  # owner (the DSPyBridge.Worker) is gone, after @linger_ms at most.
  #
  # Without /bin/sh, mkfifo or cat the worker is started directly, its stderr
  # the BEAM's, and nothing is captured.

  use GenServer

  require Logger

  alias DSPyBridge.JSON

  @first_lines 20
  # longer lines are cut: the worker bounds its own lines well below this
  @max_line 65_536
  @linger_ms 5_000

  @wrapper ~S"""
  fifo=$1; shift
  exec 2>"$fifo"
  rm -f "$fifo"
  exec "$@"
  """

  @type mode :: :logger | :passthrough

  @doc """
  What to spawn for `cmd` (a resolved `DSPyBridge.Command`): `{executable,
  args, stderr}`, `stderr` the process that will read the worker's stderr
  (give it `attach/2` once the port is open, or `abandon/1`), or `nil` when
  the worker is started directly. `labels`: the pool's name and the worker's
  index, or nil.
  """
  @spec spawn_spec(map(), map() | nil) :: {String.t(), [String.t()], pid() | nil}
  def spawn_spec(cmd, labels) do
    # The fifo is made in that process: System.cmd's port would leave an exit
    # message in the worker's mailbox, which traps exits.
    case GenServer.start(__MODULE__, {self(), cmd.stderr, labels}) do
      {:ok, pid} ->
        fifo = GenServer.call(pid, :fifo)
        {"/bin/sh", ["-c", @wrapper, "dspy_bridge_worker", fifo, cmd.python | cmd.args], pid}

      :ignore ->
        {cmd.python, cmd.args, nil}
    end
  end

  @doc "Starts reading the stderr of the worker's OS process `os_pid`."
  @spec attach(pid() | nil, non_neg_integer()) :: :ok
  def attach(nil, _os_pid), do: :ok
  def attach(pid, os_pid), do: GenServer.cast(pid, {:attach, os_pid})

  @doc "The worker's port could not be opened: stops the reader, removing the fifo."
  @spec abandon(pid() | nil) :: :ok
  def abandon(nil), do: :ok
  def abandon(pid), do: GenServer.stop(pid)

  @doc "The worker is ready: its first lines are no longer needed."
  @spec started(pid() | nil) :: :ok
  def started(nil), do: :ok
  def started(pid), do: GenServer.cast(pid, :started)

  @doc """
  The first lines of the stream (up to #{@first_lines}), once it has ended or
  `wait_ms` has passed, whichever comes first: for a worker that failed to
  start.
  """
  @spec first_lines(pid() | nil, non_neg_integer()) :: [String.t()]
  def first_lines(nil, _wait_ms), do: []

  def first_lines(pid, wait_ms) do
    GenServer.call(pid, {:first_lines, wait_ms}, wait_ms + 5_000)
  catch
    :exit, _ -> []
  end

  @impl true
  def init({owner, mode, labels}) do
    with true <- File.exists?("/bin/sh"),
         mkfifo when is_binary(mkfifo) <- System.find_executable("mkfifo"),
         cat when is_binary(cat) <- System.find_executable("cat"),
         fifo = fifo_path(),
         {_, 0} <- System.cmd(mkfifo, ["-m", "600", fifo], stderr_to_stdout: true) do
      {:ok,
       %{
         port: nil,
         cat: cat,
         fifo: fifo,
         mode: mode,
         metadata: [pool: labels && labels.name, worker: labels && labels.index],
         held: "",
         first: [],
         ready: false,
         waiting: [],
         owner: Process.monitor(owner)
       }}
    else
      _ -> :ignore
    end
  end

  defp fifo_path do
    Path.join(
      System.tmp_dir!(),
      "dspy_bridge_worker_#{System.pid()}_#{System.unique_integer([:positive])}.stderr"
    )
  end

  @impl true
  def handle_info({port, {:data, {:eol, part}}}, %{port: port} = state),
    do: {:noreply, line(state.held <> part, %{state | held: ""})}

  def handle_info({port, {:data, {:noeol, part}}}, %{port: port} = state) do
    held = state.held <> part

    if byte_size(held) >= @max_line,
      do: {:noreply, line(held, %{state | held: ""})},
      else: {:noreply, %{state | held: held}}
  end

  def handle_info({port, {:exit_status, _}}, %{port: port} = state) do
    state = if state.held == "", do: state, else: line(state.held, %{state | held: ""})
    Enum.each(state.waiting, &GenServer.reply(&1, Enum.reverse(state.first)))

    # A worker that ended before ready has its first lines asked for next (or
    # it is gone: see :DOWN).
    if not state.ready and state.waiting == [],
      do: {:noreply, %{state | port: nil}},
      else: {:stop, :normal, %{state | waiting: [], port: nil}}
  end

  def handle_info({:DOWN, ref, :process, _, _}, %{owner: ref} = state) do
    Process.send_after(self(), :linger_over, @linger_ms)
    {:noreply, state}
  end

  def handle_info(:linger_over, state) do
    # something the worker started still holds the stream open (or the
    # worker never opened it)
    with port when port != nil <- state.port,
         {:os_pid, cat} <- Port.info(port, :os_pid) do
      System.cmd("kill", ["-9", Integer.to_string(cat)], stderr_to_stdout: true)
    end

    {:stop, :normal, state}
  end

  def handle_info({:first_lines_due, from}, state) do
    if from in state.waiting do
      GenServer.reply(from, Enum.reverse(state.first))
      {:noreply, %{state | waiting: List.delete(state.waiting, from)}}
    else
      {:noreply, state}
    end
  end

  @impl true
  def handle_call(:fifo, _from, state), do: {:reply, state.fifo, state}

  def handle_call({:first_lines, _wait_ms}, _from, %{port: nil} = state),
    do: {:stop, :normal, Enum.reverse(state.first), state}

  def handle_call({:first_lines, wait_ms}, from, state) do
    Process.send_after(self(), {:first_lines_due, from}, wait_ms)
    {:noreply, %{state | waiting: [from | state.waiting]}}
  end

  @impl true
  def handle_cast(:started, %{port: nil} = state), do: {:stop, :normal, state}
  def handle_cast(:started, state), do: {:noreply, %{state | first: [], ready: true}}

  def handle_cast({:attach, os_pid}, state) do
    # cat's open of the fifo waits for the worker's shell to open it for
    # writing; cat's own stderr is dropped (at the BEAM's exit it would
    # report the broken pipe its last lines met)
    port =
      Port.open({:spawn_executable, "/bin/sh"}, [
        :binary,
        :in,
        :exit_status,
        {:line, @max_line},
        args: ["-c", ~S(exec "$0" "$1" 2>/dev/null), state.cat, state.fifo]
      ])

    {:noreply, %{state | port: port, metadata: state.metadata ++ [os_pid: os_pid]}}
  end

  @impl true
  def terminate(_reason, state) do
    _ = File.rm(state.fifo)
    :ok
  end

  defp line("", state), do: state

  defp line(text, state) do
    emit(state.mode, text, state.metadata)

    # the first lines are kept until the worker is ready
    if not state.ready and length(state.first) < @first_lines,
      do: %{state | first: [text | state.first]},
      else: state
  end

  defp emit(:passthrough, text, _metadata), do: IO.binwrite(:standard_error, [text, ?\n])

  defp emit(:logger, text, metadata) do
    case JSON.decode(text) do
      {:ok, %{} = fields} ->
        {level, fields} = Map.pop(fields, "level")
        {event, fields} = Map.pop(fields, "event", "")
        fields = Map.delete(fields, "timestamp")
        Logger.log(level(level), fn -> message(event, fields) end, metadata ++ labels(fields))

      _ ->
        Logger.warning(["dspy_bridge worker stderr: ", text], metadata)
    end
  end

  @doc false
  # The Logger message of one decoded line: its event, then its other fields.
  @spec message(term(), map()) :: iodata()
  def message(event, fields) do
    pairs =
      fields
      |> Map.delete("worker_id")
      |> Enum.sort()
      |> Enum.map(fn {key, value} -> [?\s, key, ?=, value(value)] end)

    ["dspy_bridge worker: ", value(event) | pairs]
  end

  defp value(text) when is_binary(text) do
    if text != "" and not String.contains?(text, [" ", "=", "\"", "\n"]),
      do: text,
      else: inspect(text)
  end

  defp value(other) when is_number(other) or is_boolean(other) or is_nil(other),
    do: inspect(other)

  defp value(other), do: inspect(other, limit: 50, printable_limit: 500)

  @doc false
  # The Logger metadata a decoded line names.
  @spec labels(map()) :: keyword()
  def labels(fields) do
    for {key, name} <- [
          {"worker_id", :worker_id},
          {"id", :request_id},
          {"command", :command},
          {"session_id", :session_id}
        ],
        Map.has_key?(fields, key),
        do: {name, fields[key]}
  end

  @doc false
  # A structlog level name as a Logger level (an unknown one logs at :info).
  @spec level(term()) :: Logger.level()
  def level("debug"), do: :debug
  def level("warning"), do: :warning
  def level("warn"), do: :warning
  def level("error"), do: :error
  def level("exception"), do: :error
  def level("critical"), do: :critical
  def level(_), do: :info
end
