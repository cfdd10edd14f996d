"""The response cache's settings: defaults from the operator's limits, a caller's
changes checked against those limits, and the `BridgeCache` they describe installed as
`dspy.cache`.
"""

from __future__ import annotations

import os
from typing import Any

import dspy

from dspy_bridge.domain.limits import CacheLimits
from dspy_bridge.engine.fixes import set_disk_cache
from dspy_bridge.engine.scope import BridgeCache
from dspy_bridge.protocol.errors import BridgeError, ErrorType, invalid_field


def default_cache_settings(limits: CacheLimits) -> dict[str, Any]:
    """Memory only, as large as the operator allows."""
    return {
        "enable_memory": True,
        "enable_disk": False,
        "disk_dir": None,
        "memory_max_entries": limits.max_entries,
        "memory_max_bytes": limits.max_bytes,
        "disk_size_limit_bytes": limits.max_disk_bytes,
    }


def check_cache_settings(settings: dict[str, Any], limits: CacheLimits) -> None:
    """Callers choose within the operator's bounds: sizes up to the flags, a disk
    cache only inside --disk-cache-root (resolved, so `..` and symlinks cannot leave)."""
    for name, limit, flag in (
        ("memory_max_entries", limits.max_entries, "max_cache_entries"),
        ("memory_max_bytes", limits.max_bytes, "max_cache_bytes"),
        ("disk_size_limit_bytes", limits.max_disk_bytes, "max_disk_cache_bytes"),
    ):
        if settings[name] > limit:
            raise BridgeError(
                ErrorType.LIMIT_EXCEEDED,
                f"{name} {settings[name]} is over the operator's limit of {limit}",
                retryable=False,
                details={"limit": flag, flag: limit, "field": name},
            )
    if not settings["enable_disk"]:
        settings["disk_dir"] = None
        return
    root = limits.disk_root
    if root is None:
        raise invalid_field("enable_disk", "this worker's operator allows no disk cache "
                            "(start it with --disk-cache-root DIR)")
    real_root = os.path.realpath(root)
    directory = os.path.realpath(settings["disk_dir"] or root)
    if os.path.commonpath([real_root, directory]) != real_root:
        raise invalid_field("disk_dir", f"must be inside {root} (--disk-cache-root)")
    settings["disk_dir"] = directory


def install_cache(settings: dict[str, Any]) -> None:
    """Make `dspy.cache` a fresh `BridgeCache` with these (checked) settings."""
    disk_dir = settings["disk_dir"]
    if settings["enable_disk"]:
        os.makedirs(disk_dir, exist_ok=True)
    cache = BridgeCache(
        enable_disk_cache=settings["enable_disk"],
        enable_memory_cache=settings["enable_memory"],
        disk_cache_dir=disk_dir,
        disk_size_limit_bytes=settings["disk_size_limit_bytes"],
        memory_max_entries=settings["memory_max_entries"],
        memory_max_bytes=settings["memory_max_bytes"],
    )
    with dspy._cache_lock:
        dspy.cache = cache
    set_disk_cache(settings["enable_disk"])
