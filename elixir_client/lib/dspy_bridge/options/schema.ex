defmodule DSPyBridge.Options.Schema do
  @moduledoc false
  # The option schema itself, as data: per entry point, each option's name,
  # type, default and one-line doc. The parent module compiles it into its
  # validation and its docs (the README's "Options" section among them).

  @timeout [
    type: :timeout,
    default: 30_000,
    doc:
      "how long the call may take; then it returns a `:timeout` error " <>
        "and the worker is told to cancel the work"
  ]

  @command [
    python: [
      type: :string,
      doc:
        "the Python interpreter (else `config :dspy_bridge, python:`, " <>
          "`DSPY_BRIDGE_PYTHON`, `_build/dspy_bridge/venv` of `mix dspy_bridge.setup`, " <>
          "the repository's `.venv`, `python3`)"
    ],
    args: [
      type: :list,
      default: ["-P", "-m", "dspy_bridge"],
      doc: "the interpreter's arguments"
    ],
    extra_args: [
      type: :list,
      default: [],
      doc: ~s(appended to `:args`, e.g. `["--enable-test-commands"]`)
    ],
    env: [
      type: :env,
      default: [],
      doc: "environment variables as `{name, value}` pairs (`nil`/`false` unsets one)"
    ],
    cd: [type: :string, doc: "the working directory of the OS process"],
    log_level: [type: :log_level, doc: "the worker's stderr log level (`--log-level`)"],
    stderr: [
      type: {:in, [:logger, :passthrough]},
      default: :logger,
      doc:
        "the worker's stderr: `:logger` logs its JSON lines with Logger at their level " <>
          "(metadata `pool`, `worker`, `os_pid`, `worker_id`, `request_id`, `command`, " <>
          "`session_id`); `:passthrough` copies them to the BEAM's stderr"
    ],
    transcript: [
      type: :string,
      doc:
        "records every frame to this file (the worker's `--record`); `{worker}` in it " <>
          "is the worker's index, which a pool of more than one worker requires " <>
          "(one transcript per worker; a restarted worker appends its next life)"
    ]
  ]

  @worker_own [
    name: [type: :process_name, doc: "registers the process under this name"],
    ready_timeout: [
      type: :pos_integer,
      default: 15_000,
      doc: "ms to wait for the worker's `ready` and its replay, else it is killed"
    ],
    max_in_flight: [
      type: :pos_integer,
      default: 200,
      doc: "requests in flight at once; more wait in the queue"
    ],
    max_queue: [
      type: :non_neg_integer,
      default: 10_000,
      doc: "requests waiting beyond `:max_in_flight`; more get `:overloaded`"
    ],
    overflow: [
      type: {:in, [:queue, :error]},
      default: :queue,
      doc: "`:error`: a request beyond `:max_in_flight` gets `:overloaded` at once"
    ],
    worker_timeout_margin: [
      type: :non_neg_integer,
      default: 1_000,
      doc: "ms added to a request's timeout for the worker's own `timeout_ms`"
    ],
    shutdown_grace: [
      type: :non_neg_integer,
      default: 2_000,
      doc: "ms the worker may take to drain on stop"
    ],
    kill_after: [
      type: :non_neg_integer,
      default: 2_000,
      doc: "ms to wait beyond the grace for the OS process to exit before SIGKILL"
    ],
    max_requests: [
      type: :pos_integer,
      doc:
        "recycles the worker after this many requests: its OS process is replaced " <>
          "by a fresh one (with the replay) once what is in flight is answered"
    ],
    max_age_ms: [
      type: :pos_integer,
      doc:
        "recycles the worker (like `:max_requests`) once its OS process has served this many ms"
    ],
    max_memory_mb: [
      type: :pos_integer,
      doc:
        "recycles the worker (like `:max_requests`) once its OS process's resident memory " <>
          "(RSS, read from Linux's `/proc`; ignored elsewhere) exceeds this many MiB"
    ],
    memory_check_ms: [
      type: :pos_integer,
      default: 5_000,
      doc: "ms between two reads of a ready worker's RSS for `:max_memory_mb`"
    ],
    init_commands: [
      type: :list,
      default: [],
      doc: "`[{command, args}]` sent after `ready`, before the replay"
    ],
    replay: [
      type: {:fun, 0},
      doc: "returns the batches of `{command, args}` to send before serving"
    ],
    on_event: [
      type: :event_sink,
      doc:
        "a function called with every `DSPyBridge.Event`, or a pid sent `{:dspy_bridge_event, event}`"
    ],
    pool: [
      type: :map,
      doc: "set by the pool: its name, the worker's index and its callbacks (see `Worker`)"
    ]
  ]

  @worker @command ++ @worker_own

  # the worker options a pool passes on to each of its workers
  @forwarded [
    :python,
    :args,
    :extra_args,
    :env,
    :cd,
    :log_level,
    :stderr,
    :transcript,
    :ready_timeout,
    :max_in_flight,
    :max_queue,
    :overflow,
    :worker_timeout_margin,
    :shutdown_grace,
    :kill_after,
    :max_requests,
    :max_age_ms,
    :max_memory_mb,
    :memory_check_ms
  ]

  @pool [
          name: [
            type: :atom,
            required: true,
            doc: "names the pool: its supervisor, ETS table and event registry"
          ],
          size: [
            type: :pos_integer,
            default: {:call, {System, :schedulers_online, []}},
            doc: "the number of workers"
          ],
          default_lm: [
            type: :lm,
            doc:
              "`configure_lm` arguments sent to every worker as its default LM " <>
                "(e.g. `[model: \"mock\"]`)"
          ],
          on_event: [
            type: {:fun, 1},
            doc:
              "called with every `DSPyBridge.Event`, in the worker process (keep it fast); " <>
                "processes can `DSPyBridge.subscribe/1`"
          ],
          await_ready: [
            type: :boolean,
            default: true,
            doc: "`start_link/1` returns once every worker is ready"
          ],
          max_restarts: [
            type: :non_neg_integer,
            default: 20,
            doc: "supervisor restart intensity: at most this many restarts..."
          ],
          max_seconds: [
            type: :pos_integer,
            default: 10,
            doc: "...in this many seconds, else the pool gives up"
          ],
          cluster: [
            type: :boolean,
            default: false,
            doc:
              "joins the pools of this name on every connected node into one: sessions " <>
                "owned across the cluster by rendezvous hashing, records on every pool node " <>
                "(see `DSPyBridge.Cluster` and `docs/cluster.md`)"
          ]
        ] ++ Keyword.take(@worker, @forwarded)

  @call [
    session: [
      type: :session,
      doc:
        "the session id (an atom is taken as its name): its LM, programs and usage, " <>
          "on its own worker; without it, the shared default session"
    ],
    timeout: @timeout,
    worker: [type: :non_neg_integer, doc: "(advanced) the index of the worker to use"]
  ]

  @record [
    type: :any,
    doc: "set by the client: what to record for replay once the request succeeds"
  ]

  @listen [
    type: {:fun, 2},
    doc:
      "`request/4` only: called in the calling process, while it waits, with the name and " <>
        "map of each of the worker's events for this request (`progress`, `stream`, " <>
        "`stream_status`)"
  ]

  @lm_call [
    type: :lm,
    doc: "an LM for this call, overriding the program's and the session's"
  ]

  @call_functions ~w(configure_lm/3 create_program/3 register_tools/3 list_tools/2
                     delete_tool/3 get_program/3 list_programs/2 delete_program/3
                     export_program/3 checkpoint_program/3 get_usage/2 reset_usage/2
                     list_sessions/2 register_signature/4 get_signature/3
                     list_signatures/2 delete_signature/3 ping/2 request/4)

  # Per entry point: `where` names it in error messages, `heading` and
  # `intro` in the docs; `extends` takes another schema's options first.
  @schemas [
    pool: [
      where: "Pool.start_link/1",
      heading: "`Pool.start_link/1`, `child_spec/1`",
      intro:
        "The worker options from `:python` on are passed on to every worker " <>
          "(see `Worker`).",
      options: @pool
    ],
    worker: [
      where: "Worker.start_link/1",
      heading: "`Worker.start_link/1`, `start/1`",
      intro:
        "`:python` to `:log_level` make the command (see `Command`); " <>
          "`:init_commands`, `:replay` and `:pool` are set by a pool.",
      options: @worker
    ],
    worker_child_spec: [
      where: "Worker.child_spec/1",
      heading: "`Worker.child_spec/1`",
      extends: :worker,
      options: [
        # No default here: naming the Worker module would make this schema depend on it.
        id: [type: :any, doc: "the child's id in its supervisor (default `Worker`)"]
      ]
    ],
    command: [
      where: "Command.resolve/1",
      heading: "`Command.resolve/1`",
      options: @command
    ],
    request: [
      where: "Worker.request/4",
      heading: "`Worker.request/4`, `send_request/4`",
      options: [
        timeout: @timeout,
        record: @record,
        load: [type: :any, doc: "set by the pool: its load counter, `{atomics, index}`"],
        listen: @listen
      ]
    ],
    pool_request: [
      where: "Pool.request/5",
      heading: "`Pool.request/5`",
      options: [
        timeout: @timeout,
        worker: @call[:worker],
        record: @record,
        listen: @listen,
        resume: [
          type: :non_neg_integer,
          default: 0,
          doc:
            "how many times to send the request again when its worker dies with it in " <>
              "flight: on the restarted worker, after its replay (only for a request that " <>
              "may run twice, such as a checkpointed `compile_program`)"
        ]
      ]
    ],
    broadcast: [
      where: "Pool.broadcast/4",
      heading: "`Pool.broadcast/4`",
      options: [timeout: @timeout, record: @record]
    ],
    call: [
      where: "a DSPyBridge call",
      heading: "`DSPyBridge` calls",
      intro: "The options of " <> Enum.map_join(@call_functions, ", ", &"`#{&1}`") <> ":",
      options: @call
    ],
    execute: [
      where: "DSPyBridge.execute/4",
      heading: "`DSPyBridge.execute/4`",
      extends: :call,
      options: [
        lm: @lm_call,
        config: [type: :map_or_keyword, doc: "per-call settings, e.g. `%{temperature: 0.0}`"],
        stream: [
          type: :boolean,
          doc: "the worker streams the output fields as it writes them (see `:on_chunk`)"
        ],
        on_chunk: [
          type: {:fun, 1},
          doc:
            "streams (implies `stream: true`): called in the calling process with each " <>
              "`{:chunk, field, text}` and `{:status, message}` as it arrives, before the call returns"
        ]
      ]
    ],
    stream: [
      where: "DSPyBridge.stream/4",
      heading: "`DSPyBridge.stream/4`",
      extends: :call,
      options: [
        lm: @lm_call,
        config: [type: :map_or_keyword, doc: "per-call settings, e.g. `%{temperature: 0.0}`"]
      ]
    ],
    compile: [
      where: "DSPyBridge.compile/4",
      heading: "`DSPyBridge.compile/4`",
      options: [
        trainset: [
          type: :list,
          required: true,
          doc: "the examples the optimizer learns from (maps of input and expected values)"
        ],
        metric: [
          type: {:or, [:string, :atom, :map_or_keyword]},
          required: true,
          doc: "a metric as in `evaluate/5`: a name or a map with `:name` and its options"
        ],
        valset: [
          type: :list,
          doc: "examples scored before and after (`score_before`, `score_after`; else nil)"
        ],
        options: [type: :map_or_keyword, doc: "the optimizer's options, e.g. `%{k: 4}`"],
        target_program_id: [
          type: :string,
          doc:
            "store the compiled program beside the original under this id (else it replaces it)"
        ],
        checkpoint: [
          type: {:or, [:string, :map_or_keyword]},
          doc:
            "a checkpoint id (or `%{id: id}`): the run's LM answers are kept on disk by a " <>
              "worker started with `--checkpoint-dir`, so the same compile issued again replays them"
        ],
        lm: [type: :lm, doc: "an LM for the run, overriding the program's and the session's"],
        on_progress: [
          type: {:fun, 1},
          doc: "called in the calling process with each `progress` event's map as it arrives"
        ],
        resume: [
          type: {:or, [:boolean, :non_neg_integer]},
          default: false,
          doc:
            "with a `:checkpoint`: when the worker dies during the run, issue it again on the " <>
              "restarted worker, up to this many times (`true`: 3)"
        ],
        session: @call[:session],
        timeout: [
          type: :timeout,
          default: 600_000,
          doc:
            "how long the whole compile may take (resumes included); then it returns a " <>
              "`:timeout` error and the worker is told to cancel the run"
        ],
        worker: @call[:worker]
      ]
    ],
    evaluate: [
      where: "DSPyBridge.evaluate/5",
      heading: "`DSPyBridge.evaluate/5`",
      extends: :call,
      options: [
        lm: [
          type: :lm,
          doc: "an LM for every example, overriding the program's and the session's"
        ],
        on_progress: [
          type: {:fun, 1},
          doc: "called in the calling process with each `progress` event's map as it arrives"
        ],
        max_concurrency: [type: :pos_integer, doc: "examples run at once (worker default 8)"],
        example_timeout_ms: [
          type: :pos_integer,
          doc: "ms each example may take; a slower one fails with `timeout`"
        ],
        per_example: [type: :boolean, doc: "also return every example's score and outputs"]
      ]
    ],
    import_program: [
      where: "DSPyBridge.import_program/3",
      heading: "`DSPyBridge.import_program/3`",
      extends: :call,
      options: [
        program_id: [
          type: :string,
          doc: "names the new program (else the document's id, or one the client picks)"
        ]
      ]
    ],
    end_session: [
      where: "DSPyBridge.end_session/3",
      heading: "`DSPyBridge.end_session/3`",
      intro: "The session is the second argument.",
      options: [timeout: @timeout, worker: @call[:worker]]
    ],
    configure_cache: [
      where: "DSPyBridge.configure_cache/3",
      heading: "`DSPyBridge.configure_cache/3`",
      intro: "The cache is configured on every worker, for every session.",
      options: [timeout: @timeout]
    ],
    stats: [
      where: "DSPyBridge.stats/2",
      heading: "`DSPyBridge.stats/2`",
      options: [
        worker_stats: [
          type: :boolean,
          default: true,
          doc: "fetch each worker's own `get_stats` answer (else `worker_stats: nil`)"
        ],
        timeout: [type: :non_neg_integer, default: 5_000, doc: "ms for each worker's `get_stats`"]
      ]
    ]
  ]

  # The README's "Options" section: these schemas, in this order.
  @readme [
    :pool,
    :worker,
    :worker_child_spec,
    :call,
    :execute,
    :stream,
    :evaluate,
    :compile,
    :import_program,
    :end_session,
    :configure_cache,
    :stats,
    :request,
    :pool_request,
    :broadcast
  ]

  @log_levels ~w(debug info warning error critical)

  @doc false
  def schemas, do: @schemas

  @doc false
  def readme, do: @readme

  @doc false
  def forwarded, do: @forwarded

  @doc false
  def log_levels, do: @log_levels
end
