"""The command table and one module per command family. Importing this package
imports nothing: `registry` must stay light for start-up phase one."""
