# Tests tagged :dspy need the worker's DSPy commands (configure_lm,
# create_program, execute_program, ...). They run by default; to run only the
# rest: `mix test --exclude dspy`. Logs are captured (shown for failing
# tests only) unless DSPY_BRIDGE_TEST_LOGS=1. Tests tagged :bench measure
# (speed is `make bench`'s, never the suite's): `mix test --only bench`.
ExUnit.start(
  capture_log: System.get_env("DSPY_BRIDGE_TEST_LOGS") != "1",
  exclude: [:bench]
)
