# A stand-in for the optional :telemetry library, present only in the test
# build and only while :telemetry is not a dependency: it is a Hex package,
# and Hex cannot be reached where this project is built (the client vendors
# nothing). It keeps the part of the real API the tests use —
# `attach/4`, `attach_many/4`, `detach/1`, `list_handlers/1` and `execute/3`,
# handlers called in the emitting process and detached when they fail — so
# test/telemetry_test.exs runs unchanged against the real library once it is
# a dependency. It also forwards every event to the process registered as
# :dspy_bridge_telemetry_listener, if any (the older tests' way, which the
# real library does not have).
unless List.keymember?(Mix.Project.config()[:deps] || [], :telemetry, 0) do
  defmodule :telemetry do
    @moduledoc false

    @table :dspy_bridge_fake_telemetry_handlers

    def attach(handler_id, event, function, config),
      do: attach_many(handler_id, [event], function, config)

    def attach_many(handler_id, events, function, config) when is_function(function, 4) do
      if :ets.insert_new(table(), {handler_id, events, function, config}),
        do: :ok,
        else: {:error, :already_exists}
    end

    def detach(handler_id) do
      case :ets.take(table(), handler_id) do
        [] -> {:error, :not_found}
        _ -> :ok
      end
    end

    def list_handlers(prefix) do
      for {id, events, function, config} <- :ets.tab2list(table()),
          event <- events,
          List.starts_with?(event, prefix),
          do: %{id: id, event_name: event, function: function, config: config}
    end

    def execute(event, measurements, metadata) do
      for {id, events, function, config} <- :ets.tab2list(table()), event in events do
        try do
          function.(event, measurements, metadata, config)
        catch
          # as the real library does: a failing handler is detached
          _, _ -> detach(id)
        end
      end

      case Process.whereis(:dspy_bridge_telemetry_listener) do
        nil -> :ok
        pid -> send(pid, {:telemetry, event, measurements, metadata})
      end

      :ok
    end

    # The handlers' table, made on first use and owned by a process of its
    # own (a test process that made it would take it along when it ends).
    defp table do
      case :ets.whereis(@table) do
        :undefined -> make_table()
        table -> table
      end
    end

    defp make_table do
      caller = self()

      spawn(fn ->
        try do
          :ets.new(@table, [:named_table, :public, :set, read_concurrency: true])
        rescue
          # another process made it first
          ArgumentError -> send(caller, {@table, :ready})
        else
          _ ->
            send(caller, {@table, :ready})
            Process.sleep(:infinity)
        end
      end)

      receive do
        {@table, :ready} -> :ets.whereis(@table)
      end
    end
  end
end
