defmodule DSPyBridge.OptionsTest do
  use ExUnit.Case, async: true

  import DSPyBridge.Test.Helpers

  alias DSPyBridge.{Options, Pool, Worker}

  doctest DSPyBridge.Options

  @readme Path.expand("../README.md", __DIR__)

  describe "misspelt options raise at start, naming the typo and listing the known ones" do
    test "pool start: sise:, pyhton:, default_llm:" do
      name = pool_name("typo")

      for {typo, meant} <- [sise: :size, pyhton: :python, default_llm: :default_lm] do
        error =
          assert_raise ArgumentError, fn ->
            Pool.start_link(worker_opts([{:name, name}, {:size, 1}, {typo, "x"}]))
          end

        assert error.message =~ "unknown option #{inspect(typo)} for DSPyBridge.Pool.start_link/1"
        assert error.message =~ "did you mean #{inspect(meant)}?"
        assert_lists_known(error.message, :pool)
      end

      # nothing was started
      assert Process.whereis(name) == nil
    end

    test "several unknown pool options are all named" do
      error =
        assert_raise ArgumentError, fn ->
          Pool.start_link(name: pool_name(), sise: 2, pyhton: "python3", colour: :blue)
        end

      assert error.message =~ "unknown options :sise, :pyhton, :colour"
      assert error.message =~ ":sise: did you mean :size?"
      assert error.message =~ ":pyhton: did you mean :python?"
      assert_lists_known(error.message, :pool)
    end

    test "the pool's child spec, as a supervisor's child" do
      assert_raise ArgumentError, ~r/unknown option :sise .*did you mean :size\?/, fn ->
        Supervisor.start_link([{Pool, name: pool_name(), sise: 2}], strategy: :one_for_one)
      end
    end

    test "worker start: start_link/1, start/1 and child_spec/1" do
      starts = [
        {&Worker.start_link/1, "start_link/1", :worker},
        {&Worker.start/1, "start_link/1", :worker},
        {&Worker.child_spec/1, "child_spec/1", :worker_child_spec}
      ]

      for {start, where, schema} <- starts do
        error = assert_raise ArgumentError, fn -> start.(worker_opts(pyhton: "python3")) end
        assert error.message =~ "unknown option :pyhton for DSPyBridge.Worker.#{where}"
        assert error.message =~ "did you mean :python?"
        assert_lists_known(error.message, schema)
      end

      error = assert_raise ArgumentError, fn -> Worker.start_link(worker_opts(id: :w)) end
      assert error.message =~ "unknown option :id for DSPyBridge.Worker.start_link/1"
      assert %{id: :w} = Worker.child_spec(worker_opts(id: :w))
    end

    test "a missing pool name" do
      assert_raise ArgumentError,
                   "DSPyBridge.Pool.start_link/1: required option :name not given",
                   fn ->
                     Pool.start_link(size: 1)
                   end
    end
  end

  describe "per-call options" do
    setup do
      name = pool_name("calls")
      start_supervised!({Pool, worker_opts(name: name, size: 1)})
      {:ok, pool: name}
    end

    test "timout: raises in the caller, and nothing is sent", %{pool: pool} do
      calls = [
        fn opts -> DSPyBridge.ping(pool, opts) end,
        fn opts -> DSPyBridge.request(pool, "ping", %{}, opts) end,
        fn opts -> DSPyBridge.list_programs(pool, opts) end,
        fn opts -> DSPyBridge.configure_cache(pool, %{enable_memory: true}, opts) end,
        fn opts -> DSPyBridge.end_session(pool, "s", opts) end,
        fn opts -> DSPyBridge.execute(pool, "p", %{q: 1}, opts) end,
        fn opts -> DSPyBridge.stats(pool, opts) end,
        fn opts -> Pool.request(pool, nil, "ping", %{}, opts) end
      ]

      for call <- calls do
        error = assert_raise ArgumentError, fn -> call.(timout: 1_000) end
        assert error.message =~ "unknown option :timout"
        assert error.message =~ "did you mean :timeout?"
        assert error.message =~ "the known options are: "
        assert error.message =~ ":timeout"
      end

      {:ok, %{workers: [%{requests: requests}]}} = DSPyBridge.stats(pool, worker_stats: false)
      assert requests == 0
    end

    test "the known options of each call are listed", %{pool: pool} do
      error = assert_raise ArgumentError, fn -> DSPyBridge.ping(pool, sesion: "s") end
      assert error.message =~ "the known options are: :session, :timeout, :worker"

      error = assert_raise ArgumentError, fn -> DSPyBridge.execute(pool, "p", %{}, confg: %{}) end
      assert error.message =~ "for DSPyBridge.execute/4 (did you mean :config?)"
      assert error.message =~ ":session, :timeout, :worker, :lm, :config"

      # configure_cache applies to every worker: a session would be ignored, so it is refused
      error =
        assert_raise ArgumentError, fn -> DSPyBridge.configure_cache(pool, %{}, session: "s") end

      assert error.message =~ "the known options are: :timeout"
    end

    test "worker-level request options", %{pool: pool} do
      [{0, pid, _, :ready}] = Pool.workers(pool)

      assert_raise ArgumentError,
                   ~r/unknown option :timout for DSPyBridge.Worker.request\/4/,
                   fn ->
                     Worker.request(pid, "ping", %{}, timout: 1_000)
                   end

      assert_raise ArgumentError,
                   ~r/unknown option :worker for DSPyBridge.Worker.request\/4/,
                   fn ->
                     Worker.send_request(pid, "ping", %{}, worker: 0)
                   end

      assert {:ok, %{"status" => "ok"}} = Worker.request(pid, "ping", %{}, timeout: 5_000)
    end

    test "wrongly typed values raise naming the option", %{pool: pool} do
      assert_raise ArgumentError,
                   ~r/option :timeout of a DSPyBridge call: expected ms or :infinity, got: "soon"/,
                   fn ->
                     DSPyBridge.ping(pool, timeout: "soon")
                   end

      assert_raise ArgumentError, ~r/option :session .* got: 42/, fn ->
        DSPyBridge.list_programs(pool, session: 42)
      end

      assert_raise ArgumentError, ~r/option :worker .*non-negative integer, got: -1/, fn ->
        DSPyBridge.ping(pool, worker: -1)
      end

      assert_raise ArgumentError,
                   ~r/option :worker_stats of DSPyBridge.stats\/2: expected boolean/,
                   fn ->
                     DSPyBridge.stats(pool, worker_stats: "no")
                   end

      assert_raise ArgumentError,
                   ~r/expects a keyword list of options, got: %\{timeout: 5\}/,
                   fn ->
                     DSPyBridge.ping(pool, %{timeout: 5})
                   end

      # nil for an option without a default means "not given"
      assert {:ok, %{"status" => "ok"}} = DSPyBridge.ping(pool, session: nil, worker: nil)
    end
  end

  test "wrongly typed start options raise naming the option" do
    cases = [
      {[size: 0],
       ~r/option :size of DSPyBridge.Pool.start_link\/1: expected positive integer, got: 0/},
      {[size: "4"], ~r/option :size .* got: "4"/},
      {[overflow: :drop], ~r/option :overflow .* expected :queue or :error, got: :drop/},
      {[log_level: "verbose"], ~r/option :log_level .*"warning".* got: "verbose"/},
      {[await_ready: "yes"], ~r/option :await_ready .* expected boolean/},
      # the pool calls a function; a pid (which a worker accepts) would be ignored
      {[on_event: self()], ~r/option :on_event .* expected function of arity 1, got: #PID/},
      {[default_lm: 42], ~r/option :default_lm .* expected model string, keyword list or map/},
      {[ready_timeout: :infinity], ~r/option :ready_timeout .* expected positive integer/}
    ]

    for {opts, message} <- cases do
      assert_raise ArgumentError, message, fn ->
        Pool.start_link(worker_opts(Keyword.merge([name: pool_name(), size: 1], opts)))
      end
    end

    assert_raise ArgumentError, ~r/option :name .* expected atom, got: "pool"/, fn ->
      Pool.start_link(name: "pool")
    end

    assert_raise ArgumentError,
                 ~r/option :max_in_flight of DSPyBridge.Worker.start_link\/1/,
                 fn ->
                   Worker.start_link(worker_opts(max_in_flight: 0))
                 end

    assert_raise ArgumentError, ~r/option :env .* expected \[\{name, value\}\] or map/, fn ->
      Worker.start_link(worker_opts(env: ["A=1"]))
    end
  end

  test "defaults come from the schema" do
    opts = Options.validate!([name: :p], :pool)
    assert opts[:size] == System.schedulers_online()
    assert opts[:ready_timeout] == 15_000
    assert opts[:await_ready] == true
    assert opts[:max_in_flight] == Options.default(:worker, :max_in_flight)
    refute Keyword.has_key?(opts, :python)

    # the pool passes its worker options on, so a worker gets the same defaults
    assert Enum.all?(Options.forwarded(), &(&1 in Options.keys(:worker)))
    assert Options.validate!([timeout: 5], :call) == [timeout: 5]
    # an option given twice: the first wins, as with Keyword.get/2
    assert Options.validate!([timeout: 1, session: "s", timeout: 2], :call)[:timeout] == 1
    assert Options.validate!([], :stats) |> Enum.sort() == [timeout: 5_000, worker_stats: true]
  end

  test "a started worker runs with the schema's defaults" do
    {:ok, pid} = Worker.start_link(worker_opts())
    assert Worker.await_ready(pid) == :ok
    assert Worker.info(pid).max_in_flight == Options.default(:worker, :max_in_flight)
    :gen_statem.stop(pid)
  end

  test "the README's options section is the one generated from the schema" do
    readme = File.read!(@readme)

    [_, section] = Regex.run(~r/<!-- options:begin[^>]*-->\n(.*)<!-- options:end -->/s, readme)

    assert section == Options.markdown(),
           "README.md's options section is out of date: replace it with the output of " <>
             "`mix run -e 'IO.write(DSPyBridge.Options.markdown())'`"
  end

  test "the module docs carry the generated tables" do
    for {module, schema} <- [{Pool, :pool}, {Worker, :worker}, {DSPyBridge, :call}] do
      {:docs_v1, _, _, _, %{"en" => doc}, _, _} = Code.fetch_docs(module)

      assert doc =~ Options.table(schema),
             "#{inspect(module)}'s moduledoc lacks the #{schema} table"
    end
  end

  test "every option of every schema has a type label, a doc and a valid default" do
    for schema <-
          [:pool, :worker, :worker_child_spec, :command, :request, :pool_request] ++
            [:broadcast, :call, :execute, :import_program, :end_session] ++
            [:configure_cache, :stats] do
      table = Options.table(schema)

      for key <- Options.keys(schema),
          schema not in [:execute, :import_program, :worker_child_spec] do
        assert table =~ "| `#{inspect(key)}` |"
      end

      # the defaults pass their own type checks
      opts = if schema == :pool, do: [name: :p], else: []
      assert is_list(Options.validate!(opts, schema))
    end
  end

  defp assert_lists_known(message, schema) do
    [_, listed] = Regex.run(~r/the known options are: (.*)$/, message)
    assert listed == Enum.map_join(Options.keys(schema), ", ", &inspect/1)
  end
end
