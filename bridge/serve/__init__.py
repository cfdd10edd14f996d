"""Serving: the worker loop, admission, the request session, lifecycle and timers."""
