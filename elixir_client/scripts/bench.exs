# The Elixir side of `make bench`: figures measured through the pool (the
# public `DSPyBridge` API), each beside baselines taken in the same run:
#
#     cd elixir_client && mix run scripts/bench.exs [--quick]
#
# Baselines: the port echo, a minimal GenServer owning a port to
# `bench/echo.py` (a Python loop that decodes each msgpack request and answers
# `{id, success: true, result}`, nothing else); the bare worker, the same
# GenServer in front of the pool's own worker command (so pool ÷ bare worker is
# what the Elixir client adds, bare worker ÷ echo what the Python worker adds);
# and, as floors for one round trip, ports owned by the caller to echo.py and
# to `cat`. Workloads, each for several rounds (figures are medians over
# rounds; a round's latency figures are its p50/p99):
#
#   * `ping` one at a time                 vs the baselines one at a time;
#   * 4,000 `ping`s at once                vs 4,000 calls at once to the baselines;
#   * `execute_program` one at a time      (mock LM, DSPy's cache off): absolute,
#                                             and the worker's own `duration_ms`;
#   * 500 executes at once, 100 ms mock LM latency, on pools of 1, 2 and 4;
#   * payload round trips of 1 KB, 100 KB, 1 MB (the worker's test-only `echo`)
#                                          vs the baselines.
#
# Prints a markdown report and writes it to ../bench/elixir.md (the repository's
# bench/). Nothing asserts. `--quick` runs fewer rounds and samples (well under
# a minute).

Logger.configure(level: :error)

defmodule Bench.Stats do
  @moduledoc false

  def median([]), do: nil

  def median(values) do
    sorted = Enum.sort(values)
    n = length(sorted)
    mid = div(n, 2)

    if rem(n, 2) == 1,
      do: Enum.at(sorted, mid),
      else: (Enum.at(sorted, mid - 1) + Enum.at(sorted, mid)) / 2
  end

  # Nearest-rank percentile.
  def percentile(values, p) do
    sorted = Enum.sort(values)
    rank = max(ceil(p / 100 * length(sorted)), 1)
    Enum.at(sorted, rank - 1)
  end

  def now_us, do: System.monotonic_time(:nanosecond) / 1000

  # Runs `fun` and returns {microseconds, result}.
  def timed(fun) do
    started = now_us()
    result = fun.()
    {now_us() - started, result}
  end
end

defmodule Bench.EchoServer do
  @moduledoc false
  # The baseline for concurrent calls: a minimal GenServer owning one port to
  # bench/echo.py, multiplexing callers by request id — what any client of a
  # port must do at the least.
  use GenServer

  alias DSPyBridge.MsgPack

  def start_link(command), do: GenServer.start_link(__MODULE__, command)
  def call(pid, command, args), do: GenServer.call(pid, {:call, command, args}, 120_000)
  def stop(pid), do: GenServer.stop(pid)

  @impl true
  def init({executable, args}) do
    Process.flag(:trap_exit, true)
    {:ok, %{port: Bench.Port.open(executable, args), next: 0, waiting: %{}}}
  end

  @impl true
  def handle_call({:call, command, args}, from, state) do
    id = state.next
    Port.command(state.port, Bench.Port.frame(id, command, args))
    {:noreply, %{state | next: id + 1, waiting: Map.put(state.waiting, id, from)}}
  end

  # Answers are matched to callers by id; anything else (the real worker's
  # events, e.g. `ready`) is dropped.
  @impl true
  def handle_info({port, {:data, bin}}, %{port: port} = state) do
    case MsgPack.decode!(bin) do
      %{"id" => id} = response when is_map_key(state.waiting, id) ->
        {from, waiting} = Map.pop(state.waiting, id)

        GenServer.reply(
          from,
          if(response["success"], do: {:ok, response["result"]}, else: {:error, response["error"]})
        )

        {:noreply, %{state | waiting: waiting}}

      _event ->
        {:noreply, state}
    end
  end

  def handle_info({port, {:exit_status, status}}, %{port: port} = state),
    do: {:stop, {:echo_exited, status}, state}

  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, state) do
    if Port.info(state.port), do: Port.close(state.port)
    :ok
  end
end

defmodule Bench.Port do
  @moduledoc false
  # A port owned by the calling process, and the request frame every baseline
  # sends (the same envelope the client sends: id, command, args, timeout_ms).
  alias DSPyBridge.MsgPack

  def open(executable, args) do
    Port.open(
      {:spawn_executable, executable},
      [:binary, {:packet, 4}, :exit_status, :use_stdio, args: args]
    )
  end

  def frame(id, command, args) do
    MsgPack.encode!(%{
      "id" => id,
      "command" => command,
      "args" => args,
      "timeout_ms" => 30_000
    })
  end

  # One round trip on a port owned by the caller (no process in between).
  def round_trip(port, id, command, args) do
    Port.command(port, frame(id, command, args))

    receive do
      {^port, {:data, bin}} -> MsgPack.decode!(bin)
    after
      30_000 -> raise "no answer from the echo port"
    end
  end

  def close(port) do
    if Port.info(port), do: Port.close(port)

    receive do
      {^port, {:exit_status, _}} -> :ok
    after
      0 -> :ok
    end
  end
end

defmodule Bench do
  @moduledoc false
  alias Bench.Stats

  # -- measurements ---------------------------------------------------------------

  # `n` calls one after another: their latencies in µs.
  def serial(n, call) do
    for i <- 1..n do
      {us, _} = Stats.timed(fn -> call.(i) end)
      us
    end
  end

  # `n` calls all at once (one process each): {wall µs, errors}.
  def burst(n, call) do
    {us, errors} =
      Stats.timed(fn ->
        1..n
        |> Task.async_stream(call, max_concurrency: n, ordered: false, timeout: :infinity)
        |> Enum.count(&(not match?({:ok, {:ok, _}}, &1)))
      end)

    {us, errors}
  end

  # Runs `rounds` rounds of `fun`, each returning a map of figures; returns the
  # median of each figure over the rounds.
  def rounds(rounds, fun) do
    results = for r <- 1..rounds, do: fun.(r)

    results
    |> hd()
    |> Map.keys()
    |> Map.new(fn key -> {key, Stats.median(Enum.map(results, & &1[key]))} end)
  end

  def latency(samples),
    do: %{p50: Stats.percentile(samples, 50), p99: Stats.percentile(samples, 99)}

  # -- formatting -------------------------------------------------------------------

  def us(nil), do: "–"
  def us(v) when v < 1_000, do: "#{:erlang.float_to_binary(v / 1, decimals: 1)} µs"
  def us(v) when v < 1_000_000, do: "#{:erlang.float_to_binary(v / 1000, decimals: 2)} ms"
  def us(v), do: "#{:erlang.float_to_binary(v / 1_000_000, decimals: 3)} s"

  def rate(nil), do: "–"
  def rate(per_s), do: "#{round(per_s) |> Integer.to_string() |> group()}/s"

  def ratio(_, nil), do: "–"
  def ratio(nil, _), do: "–"
  def ratio(a, b), do: "#{:erlang.float_to_binary(a / b, decimals: 2)}×"

  defp group(digits) do
    digits
    |> String.reverse()
    |> String.graphemes()
    |> Enum.chunk_every(3)
    |> Enum.map_join(",", &Enum.join/1)
    |> String.reverse()
  end

  def table(header, rows) do
    line = fn cells -> "| " <> Enum.join(cells, " | ") <> " |" end

    Enum.join(
      [line.(header), line.(Enum.map(header, fn _ -> "---" end)) | Enum.map(rows, line)],
      "\n"
    )
  end

  def progress(text), do: IO.puts(:stderr, "bench: " <> text)

  # -- set-up -----------------------------------------------------------------------

  # The worker flags of the pools and of the bare worker.
  def worker_opts, do: [log_level: "error", extra_args: ["--enable-test-commands"]]

  # Starts a pool; returns {µs from start to DSPy loaded in every worker, program id}.
  def start_pool(name, size, lm) do
    {us, _} =
      Stats.timed(fn ->
        {:ok, _} =
          DSPyBridge.Pool.start_link([name: name, size: size, default_lm: lm] ++ worker_opts())

        # Every workload runs after DSPy loaded: configure_lm builds a dspy.LM.
        {:ok, _} = DSPyBridge.configure_lm(name, lm, timeout: 120_000)
      end)

    {:ok, _} = DSPyBridge.configure_cache(name, enable_memory: false, enable_disk: false)

    {:ok, %{"program_id" => program}} =
      DSPyBridge.create_program(name, program_id: "qa", signature: "question -> answer")

    for {index, _, _, _} <- DSPyBridge.Pool.workers(name) do
      {:ok, %{"dspy_loaded" => true}} = DSPyBridge.ping(name, worker: index)
    end

    {us, program}
  end

  def python_version(python) do
    {out, 0} =
      System.cmd(python, [
        "-c",
        "import platform, importlib.metadata as m; " <>
          "print(platform.python_version(), m.version('dspy'), m.version('msgpack'))"
      ])

    String.split(out)
  end

  # The 1, 5 and 15 minute load averages: other work on the machine skews every figure.
  def load_average do
    case File.read("/proc/loadavg") do
      {:ok, text} -> text |> String.split() |> Enum.take(3) |> Enum.join(" ")
      _ -> "unknown"
    end
  end

  def cpu_model do
    case File.read("/proc/cpuinfo") do
      {:ok, text} ->
        case Regex.run(~r/^model name\s*:\s*(.+)$/m, text) do
          [_, model] -> String.trim(model)
          _ -> "unknown CPU"
        end

      _ ->
        "unknown CPU"
    end
  end
end

# == Parameters =======================================================================

quick? = "--quick" in System.argv()

p =
  if quick?,
    do: %{
      rounds: 3,
      ping: 500,
      burst: 4_000,
      execute: 60,
      scale_rounds: 3,
      concurrent: 500,
      payload: %{1_024 => 60, 102_400 => 20, 1_048_576 => 6},
      sizes: [1, 2, 4]
    },
    else: %{
      rounds: 7,
      ping: 2_000,
      burst: 4_000,
      execute: 300,
      scale_rounds: 7,
      concurrent: 500,
      payload: %{1_024 => 300, 102_400 => 100, 1_048_576 => 25},
      sizes: [1, 2, 4]
    }

mock_latency_ms = 100
python = DSPyBridge.Command.resolve([]).python
echo_script = Path.expand("../bench/echo.py", __DIR__)
echo_cmd = {python, [echo_script]}
cat = System.find_executable("cat")
out_path = Path.join(DSPyBridge.Command.repo_root(), "bench/elixir.md")
wall_started = Bench.Stats.now_us()
load_at_start = Bench.load_average()

# == Pool of 1 and the baselines ========================================================

Bench.progress("starting a pool of 1 worker (mock LM), a bare worker and the echo baselines")
pool = Bench.Pool1
{_, program} = Bench.start_pool(pool, 1, model: "mock")
{:ok, echo} = Bench.EchoServer.start_link(echo_cmd)

# The bare worker: the same worker command as the pool's, behind the same
# minimal GenServer as the echo. Pool ÷ bare worker is what the Elixir client
# adds; bare worker ÷ echo is what the Python worker adds over a msgpack peer.
worker_cmd = DSPyBridge.Command.resolve(Bench.worker_opts())
{:ok, bare} = Bench.EchoServer.start_link({worker_cmd.python, worker_cmd.args})
{:ok, _} = Bench.EchoServer.call(bare, "configure_lm", %{"model" => "mock"})
{:ok, %{"dspy_loaded" => true}} = Bench.EchoServer.call(bare, "ping", %{})

direct = Bench.Port.open(python, [echo_script])
cat_port = if cat, do: Bench.Port.open(cat, [])

ping_pool = fn _ -> DSPyBridge.ping(pool, timeout: 120_000) end
ping_bare = fn _ -> Bench.EchoServer.call(bare, "ping", %{}) end
ping_echo = fn _ -> Bench.EchoServer.call(echo, "ping", %{}) end
ping_direct = fn i -> Bench.Port.round_trip(direct, i, "ping", %{}) end
ping_cat = fn i -> Bench.Port.round_trip(cat_port, i, "ping", %{}) end

# warm-up (the JIT of both sides, DSPy's first prediction)
for call <-
      [ping_pool, ping_bare, ping_echo, ping_direct] ++ if(cat_port, do: [ping_cat], else: []),
    do: Bench.serial(300, call)

for call <- [ping_pool, ping_bare, ping_echo], do: Bench.burst(p.burst, call)

for i <- 1..20,
    do: DSPyBridge.execute(pool, program, %{question: "warm-up #{i}"}, timeout: 120_000)

# -- ping one at a time -----------------------------------------------------------------

Bench.progress("ping one at a time: #{p.rounds} rounds of #{p.ping}")

none = %{p50: nil, p99: nil}

ping =
  Bench.rounds(p.rounds, fn _ ->
    l = fn call -> Bench.latency(Bench.serial(p.ping, call)) end
    pool_l = l.(ping_pool)
    bare_l = l.(ping_bare)
    echo_l = l.(ping_echo)
    direct_l = l.(ping_direct)
    cat_l = if cat_port, do: l.(ping_cat), else: none

    %{
      pool_p50: pool_l.p50,
      pool_p99: pool_l.p99,
      bare_p50: bare_l.p50,
      bare_p99: bare_l.p99,
      echo_p50: echo_l.p50,
      echo_p99: echo_l.p99,
      direct_p50: direct_l.p50,
      direct_p99: direct_l.p99,
      cat_p50: cat_l.p50,
      cat_p99: cat_l.p99
    }
  end)

# -- 4,000 pings at once -----------------------------------------------------------------

Bench.progress("#{p.burst} pings at once: #{p.rounds} rounds")

burst =
  Bench.rounds(p.rounds, fn _ ->
    {pool_us, pool_err} = Bench.burst(p.burst, ping_pool)
    {bare_us, bare_err} = Bench.burst(p.burst, ping_bare)
    {echo_us, echo_err} = Bench.burst(p.burst, ping_echo)

    %{
      pool: p.burst / (pool_us / 1_000_000),
      bare: p.burst / (bare_us / 1_000_000),
      echo: p.burst / (echo_us / 1_000_000),
      errors: pool_err + bare_err + echo_err
    }
  end)

# -- execute one at a time ----------------------------------------------------------------

Bench.progress("execute_program one at a time: #{p.rounds} rounds of #{p.execute}")

execute =
  Bench.rounds(p.rounds, fn r ->
    samples =
      for i <- 1..p.execute do
        question = "round #{r} question #{i}"

        {us, {:ok, %{"duration_ms" => worker_ms}}} =
          Bench.Stats.timed(fn ->
            DSPyBridge.execute(pool, program, %{question: question}, timeout: 120_000)
          end)

        {us, worker_ms * 1000}
      end

    client = Enum.map(samples, &elem(&1, 0))
    worker = Enum.map(samples, &elem(&1, 1))
    overhead = Enum.map(samples, fn {c, w} -> c - w end)

    %{
      p50: Bench.Stats.percentile(client, 50),
      p99: Bench.Stats.percentile(client, 99),
      worker_p50: Bench.Stats.percentile(worker, 50),
      overhead_p50: Bench.Stats.percentile(overhead, 50)
    }
  end)

# -- payload round trips ------------------------------------------------------------------

Bench.progress("payload round trips: #{p.rounds} rounds")

payload =
  for {bytes, n} <- Enum.sort(p.payload) do
    value = String.duplicate("x", bytes)
    args = %{"value" => value}
    pool_call = fn _ -> DSPyBridge.request(pool, "echo", args, timeout: 120_000) end
    bare_call = fn _ -> Bench.EchoServer.call(bare, "echo", args) end
    echo_call = fn _ -> Bench.EchoServer.call(echo, "echo", args) end
    for call <- [pool_call, bare_call, echo_call], do: Bench.serial(3, call)

    figures =
      Bench.rounds(p.rounds, fn _ ->
        l = fn call -> Bench.latency(Bench.serial(n, call)) end
        pool_l = l.(pool_call)
        bare_l = l.(bare_call)
        echo_l = l.(echo_call)

        %{
          pool_p50: pool_l.p50,
          pool_p99: pool_l.p99,
          bare_p50: bare_l.p50,
          bare_p99: bare_l.p99,
          echo_p50: echo_l.p50,
          echo_p99: echo_l.p99
        }
      end)

    {bytes, figures}
  end

Bench.EchoServer.stop(echo)
Bench.EchoServer.stop(bare)
Bench.Port.close(direct)
if cat_port, do: Bench.Port.close(cat_port)
:ok = DSPyBridge.Pool.stop(pool)

# -- pool scaling ----------------------------------------------------------------------

scale_lm = [model: "mock", extra: %{latency_ms: mock_latency_ms}]

scaling =
  for size <- p.sizes do
    Bench.progress(
      "pool of #{size}: #{p.scale_rounds} rounds of #{p.concurrent} executes at once " <>
        "(#{mock_latency_ms} ms mock latency) and #{p.burst} pings at once"
    )

    name = Module.concat(Bench, "Scale#{size}")
    {start_us, program} = Bench.start_pool(name, size, scale_lm)
    {:ok, %{workers: [w | _]}} = DSPyBridge.stats(name, worker_stats: false)

    execute_call = fn tag ->
      fn i ->
        DSPyBridge.execute(name, program, %{question: "#{tag} #{i}"}, timeout: 120_000)
      end
    end

    ping_call = fn _ -> DSPyBridge.ping(name, timeout: 120_000) end
    Bench.burst(50, execute_call.("warm-up"))
    Bench.burst(p.burst, ping_call)

    figures =
      Bench.rounds(p.scale_rounds, fn r ->
        {exec_us, exec_err} = Bench.burst(p.concurrent, execute_call.("round #{r}"))
        {ping_us, ping_err} = Bench.burst(p.burst, ping_call)

        %{
          exec_us: exec_us,
          exec_rate: p.concurrent / (exec_us / 1_000_000),
          ping_rate: p.burst / (ping_us / 1_000_000),
          errors: exec_err + ping_err
        }
      end)

    :ok = DSPyBridge.Pool.stop(name)

    # With `max_in_flight` requests in flight per worker and an even spread, the
    # executes go in waves of mock_latency_ms each: the least the run can take.
    waves = ceil(p.concurrent / (w.max_in_flight * size))

    {size,
     Map.merge(figures, %{
       start_us: start_us,
       max_in_flight: w.max_in_flight,
       waves: waves,
       floor_us: waves * mock_latency_ms * 1000
     })}
  end

# == Report ==========================================================================

[py_version, dspy_version, msgpack_version] = Bench.python_version(python)
cores = :erlang.system_info(:logical_processors_available)
cores = if is_integer(cores), do: cores, else: :erlang.system_info(:logical_processors)
total_s = (Bench.Stats.now_us() - wall_started) / 1_000_000

kb = fn
  bytes when bytes >= 1_048_576 -> "#{div(bytes, 1_048_576)} MB"
  bytes -> "#{div(bytes, 1024)} KB"
end

# a latency row: µs, and ratios of latencies
lat = fn workload, metric, pool_v, bare_v, echo_v ->
  [
    workload,
    metric,
    Bench.us(pool_v),
    Bench.us(bare_v),
    Bench.us(echo_v),
    Bench.ratio(pool_v, echo_v),
    Bench.ratio(pool_v, bare_v)
  ]
end

main_table =
  Bench.table(
    [
      "Workload",
      "Metric",
      "Through the pool",
      "Bare worker (minimal GenServer, no pool)",
      "Port echo (minimal GenServer, echo.py)",
      "Pool ÷ echo",
      "Pool ÷ bare worker"
    ],
    [
      lat.("`ping`, one at a time", "p50", ping.pool_p50, ping.bare_p50, ping.echo_p50),
      lat.("`ping`, one at a time", "p99", ping.pool_p99, ping.bare_p99, ping.echo_p99),
      [
        "#{p.burst} `ping`s at once",
        "throughput",
        Bench.rate(burst.pool),
        Bench.rate(burst.bare),
        Bench.rate(burst.echo),
        Bench.ratio(burst.echo, burst.pool),
        Bench.ratio(burst.bare, burst.pool)
      ]
      | for {bytes, f} <- payload,
            {metric, pk, bk, ek} <- [
              {"p50", :pool_p50, :bare_p50, :echo_p50},
              {"p99", :pool_p99, :bare_p99, :echo_p99}
            ] do
          lat.("`echo` of #{kb.(bytes)}, round trip", metric, f[pk], f[bk], f[ek])
        end
    ]
  )

floor_table =
  Bench.table(
    ["One round trip, one at a time", "p50", "p99"],
    [
      [
        "port to echo.py owned by the calling process",
        Bench.us(ping.direct_p50),
        Bench.us(ping.direct_p99)
      ],
      [
        "port to `cat` owned by the calling process (no Python)",
        Bench.us(ping.cat_p50),
        Bench.us(ping.cat_p99)
      ]
    ]
  )

execute_table =
  Bench.table(
    ["Workload", "p50", "p99", "Worker's `duration_ms` p50", "Client − worker p50"],
    [
      [
        "`execute_program` one at a time (predict, `question -> answer`, mock LM, cache off)",
        Bench.us(execute.p50),
        Bench.us(execute.p99),
        Bench.us(execute.worker_p50),
        Bench.us(execute.overhead_p50)
      ]
    ]
  )

{first_size, first} = hd(scaling)

scaling_table =
  Bench.table(
    [
      "Pool size",
      "#{p.concurrent} executes at once: wall",
      "throughput",
      "vs size #{first_size}",
      "floor (waves × #{mock_latency_ms} ms)",
      "#{p.burst} `ping`s at once",
      "vs size #{first_size}",
      "start to DSPy loaded"
    ],
    for {size, f} <- scaling do
      [
        Integer.to_string(size),
        Bench.us(f.exec_us),
        Bench.rate(f.exec_rate),
        Bench.ratio(f.exec_rate, first.exec_rate),
        "#{Bench.us(f.floor_us)} (#{f.waves} × #{f.max_in_flight} in flight/worker)",
        Bench.rate(f.ping_rate),
        Bench.ratio(f.ping_rate, first.ping_rate),
        Bench.us(f.start_us)
      ]
    end
  )

errors = round(burst.errors + Enum.sum(Enum.map(scaling, fn {_, f} -> f.errors end)))
payloads = Enum.map_join(Enum.sort(p.payload), ", ", fn {b, n} -> "#{n} × #{kb.(b)}" end)

report = """
# dspy-bridge bench — Elixir side (through `DSPyBridge.Pool`)

- date: #{DateTime.utc_now() |> DateTime.truncate(:second) |> DateTime.to_iso8601()}
- machine: #{cores} cores (#{Bench.cpu_model()}), #{System.schedulers_online()} schedulers online; load average #{load_at_start} at the start, #{Bench.load_average()} at the end
- Erlang/OTP #{:erlang.system_info(:otp_release)} (erts #{:erlang.system_info(:version)}), Elixir #{System.version()}; Python #{py_version}, DSPy #{dspy_version}, msgpack #{msgpack_version}
- run: `mix run scripts/bench.exs#{if quick?, do: " --quick"}` (#{if quick?, do: "quick", else: "full"}): #{p.rounds} rounds (#{p.scale_rounds} for scaling), figures are medians over rounds; #{:erlang.float_to_binary(total_s, decimals: 1)} s in all
- pool: `DSPyBridge.Pool`, default options, workers started with `--enable-test-commands`, mock LM, DSPy's cache off (`configure_cache`); every workload ran after DSPy had loaded (a `configure_lm` answered)
- bare worker: the same worker command, spoken to by a minimal GenServer owning its port (multiplexing by id, nothing else); port echo: that GenServer in front of `bench/echo.py`, a blocking loop that decodes each msgpack frame and answers `{id, success: true, result}` (`result` = the request's `args.value`, else `{}`). Same port options (`{:packet, 4}`) and request envelope everywhere.

## Through the pool, beside the bare worker and a port echo

Latency: each round's p50/p99 over #{p.ping} one-at-a-time calls (payloads: #{payloads}). Throughput: #{p.burst} calls, one process each, all at once. Ratios are of time per request (pool ÷ echo: all the bridge costs over a msgpack peer; pool ÷ bare worker: what the Elixir client adds).

#{main_table}

Floors for one round trip, no GenServer in between:

#{floor_table}

## `execute_program` (no Elixir baseline: compare with the Python bench's in-process figure)

#{p.execute} executes one at a time per round, each with a distinct question. "Client − worker" is the round trip minus the worker's own `duration_ms`: the bridge's overhead on a DSPy call.

#{execute_table}

## Pool scaling: #{p.concurrent} concurrent executes, #{mock_latency_ms} ms mock LM latency

Each execute waits #{mock_latency_ms} ms in the mock LM (`latency_ms`); all #{p.concurrent} start at once, spread by the pool (least-loaded). The floor is the time the waves of in-flight requests alone would take.

#{scaling_table}

Calls that failed (bursts and scaling, medians over rounds): #{errors}.
"""

IO.puts(report)
File.mkdir_p!(Path.dirname(out_path))
File.write!(out_path, report)
Bench.progress("written to #{out_path}")
