"""Watch a config file mounted from a ConfigMap and report changed contents.

The kubelet updates a ConfigMap volume atomically: it writes a new timestamped directory
and swaps the `..data` symlink, so the mounted `config.yaml -> ..data/config.yaml` keeps
its path while the inode behind it changes (inotify on the path sees nothing useful). So
we poll: stat() the path (following symlinks) and, when (inode, mtime, size, resolved path)
changed, hash the contents; the callback runs only when the bytes really changed. A file
that is briefly missing during a swap is simply retried on the next poll.

Usage:
    watcher = ConfigFileWatcher(path, on_change)   # on_change(path): sync or async; a
    watcher.start(); ...; await watcher.stop()      # result of False means "rejected"
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import os
from collections.abc import Callable
from typing import Any

from epp.aio import cancel_and_wait

log = logging.getLogger(__name__)

# Called with the path; may return an awaitable. A (resolved) result of False means the new
# config was rejected and the old one kept; anything else counts as reloaded.
ConfigChangeCallback = Callable[[str], Any]


class ConfigFileWatcher:
    def __init__(self, path: str, on_change: ConfigChangeCallback, interval_s: float = 1.0) -> None:
        if interval_s <= 0:
            raise ValueError(f"config watch interval must be > 0, got {interval_s}")
        self.path = path
        self._on_change = on_change
        self._interval_s = interval_s
        self._stat_key: tuple[int, int, int, str] | None = None
        self._digest: bytes | None = None
        self._task: asyncio.Task[None] | None = None
        self.reloads = 0  # callbacks delivered

    def _current_stat_key(self) -> tuple[int, int, int, str] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size, os.path.realpath(self.path))

    def _read_digest(self) -> bytes | None:
        try:
            with open(self.path, "rb") as f:
                return hashlib.sha256(f.read()).digest()
        except OSError:
            return None

    def prime(self) -> None:
        """Record the current file as already loaded (the server read it at startup)."""
        self._stat_key = self._current_stat_key()
        self._digest = self._read_digest()

    async def check(self) -> bool:
        """Poll once; run the callback if the contents changed. True if it ran."""
        key = self._current_stat_key()
        if key is None or key == self._stat_key:
            return False
        digest = self._read_digest()
        if digest is None:
            return False  # vanished between stat and read: next poll
        self._stat_key = key
        if digest == self._digest:
            return False
        self._digest = digest
        log.info("config file %s changed; reloading", self.path)
        try:
            result = self._on_change(self.path)
            if inspect.isawaitable(result):
                result = await result
        except Exception:
            # The server keeps the previous config; a fixed file triggers another reload.
            log.exception("reloading config %s failed; keeping the previous config", self.path)
            return False
        if result is False:
            return False
        self.reloads += 1
        return True

    def start(self) -> None:
        if self._digest is None and self._stat_key is None:
            self.prime()
        self._task = asyncio.create_task(self._run(), name=f"config-watch {self.path}")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.check()

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
