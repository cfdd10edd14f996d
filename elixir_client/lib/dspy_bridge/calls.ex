defmodule DSPyBridge.Calls do
  @moduledoc false
  # How the public calls reach the pool: reads go to the session's worker (or the
  # least-loaded one), mutations to the session's worker or, for the default
  # session, to every worker, with what to record for replay.

  alias DSPyBridge.Pool
  alias DSPyBridge.Pool.Store

  @doc false
  def read(pool, command, args, opts, listen \\ nil) do
    session = session(opts)
    call_opts = call_opts(opts) ++ if(listen, do: [listen: listen], else: [])
    Pool.request(pool, session, command, put_opt(args, "session_id", session), call_opts)
  end

  # A state change: sent to the session's worker, or to every worker for the
  # default session; `record_fun` says what to record once it succeeds.
  @doc false
  def mutate(pool, command, args, opts, record_fun) do
    session = session(opts)
    args = put_opt(args, "session_id", session)
    record = record_fun.(session, args)
    call_opts = call_opts(opts) ++ if(record, do: [record: record], else: [])

    if session != nil or is_integer(opts[:worker]),
      do: Pool.request(pool, session, command, args, call_opts),
      else: Pool.broadcast(pool, command, args, call_opts)
  end

  # checkpoint_program/3: an export whose document the worker that exports
  # it records, as it records the other changes (a clustered pool's session:
  # on its owner, which copies it to every pool node).
  @doc false
  def checkpoint(pool, program_id, opts) do
    session = session(opts)
    args = put_opt(%{"program_id" => program_id}, "session_id", session)
    call_opts = call_opts(opts) ++ [record: {:checkpoint, session, program_id, nil}]

    with {:ok, %{"document" => doc}} <-
           Pool.request(pool, session, "export_program", args, call_opts),
         do: {:ok, doc}
  end

  @doc false
  def all_workers(pool, command, args, opts) do
    %{size: size} = Store.config(pool)
    on_workers(pool, Enum.to_list(0..(size - 1)), command, args, opts)
  end

  @doc false
  def on_workers(pool, indexes, command, args, opts) do
    args = put_opt(args, "session_id", session(opts))

    results =
      indexes
      |> Enum.map(fn i ->
        Task.async(fn ->
          Pool.request(pool, nil, command, args, Keyword.put(call_opts(opts), :worker, i))
        end)
      end)
      |> Task.await_many(:infinity)

    case Enum.find(results, &match?({:error, _}, &1)) do
      nil -> {:ok, Enum.map(results, fn {:ok, r} -> r end)}
      error -> error
    end
  end

  # (a `worker: nil` is not passed on: it means none)
  @doc false
  def call_opts(opts), do: for({k, v} <- opts, k in [:timeout, :worker], v != nil, do: {k, v})

  # Session ids are strings on the wire; an atom is taken as its name, so
  # `:acme` and `"acme"` are the same session (and hash to the same worker).
  @doc false
  def session(opts) do
    case Keyword.get(opts, :session) do
      nil -> nil
      s when is_binary(s) -> s
      s when is_atom(s) -> Atom.to_string(s)
      other -> raise ArgumentError, "session must be a string, got: #{inspect(other)}"
    end
  end

  @doc false
  def put_opt(map, _key, nil), do: map
  def put_opt(map, key, value), do: Map.put(map, key, value)

  @doc false
  def generate_id(prefix),
    do: prefix <> "-" <> Base.encode16(<<:rand.uniform(0xFFFFFFFFFFFF)::48>>, case: :lower)
end
