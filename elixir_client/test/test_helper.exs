# Tests tagged :dspy need the worker's DSPy commands (configure_lm,
# create_program, execute_program, ...). They run by default; to run only the
# rest: `mix test --exclude dspy`.
ExUnit.start(capture_log: true)
