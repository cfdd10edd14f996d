"""dspy-bridge: a long-lived worker that runs DSPy programs for a host over framed msgpack.

Nothing is imported here: the entry point must claim stdout before any other import.
"""

__version__ = "0.1.0"
