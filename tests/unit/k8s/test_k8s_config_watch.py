"""ConfigFileWatcher against a ConfigMap-style volume (kubelet's ..data symlink swap)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from epp.k8s.config_watch import ConfigFileWatcher


def _configmap_volume(root: Path, content: str, generation: int) -> None:
    """Lay out a ConfigMap volume the way the kubelet does and atomically swap ..data."""
    data_dir = root / f"..2026_11_25_00_00_{generation:02d}.000000000"
    data_dir.mkdir()
    (data_dir / "config.yaml").write_text(content)
    tmp_link = root / "..data_tmp"
    tmp_link.symlink_to(data_dir.name)
    os.replace(tmp_link, root / "..data")
    visible = root / "config.yaml"
    if not visible.is_symlink():
        visible.symlink_to("..data/config.yaml")


async def test_symlink_swap_triggers_one_reload_per_content_change(tmp_path: Path) -> None:
    _configmap_volume(tmp_path, "plugins: []\n", 1)
    path = str(tmp_path / "config.yaml")
    seen: list[str] = []
    watcher = ConfigFileWatcher(path, lambda p: seen.append(Path(p).read_text()), interval_s=0.05)
    watcher.prime()
    assert await watcher.check() is False  # nothing changed yet

    # Same size, new inode and directory: still detected.
    _configmap_volume(tmp_path, "plugins: [1]\n", 2)
    assert await watcher.check() is True
    assert seen == ["plugins: [1]\n"]
    assert await watcher.check() is False

    # A swap to identical bytes is not a reload.
    _configmap_volume(tmp_path, "plugins: [1]\n", 3)
    assert await watcher.check() is False
    assert watcher.reloads == 1


async def test_async_callback_and_failure_keeps_watching(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("a: 1\n")
    calls: list[str] = []

    async def reload(p: str) -> None:
        calls.append(Path(p).read_text())
        if "bad" in calls[-1]:
            raise ValueError("invalid config")

    watcher = ConfigFileWatcher(str(cfg), reload, interval_s=0.05)
    watcher.prime()
    cfg.write_text("bad: yes\n")
    assert await watcher.check() is False  # callback raised: not counted as a reload
    cfg.write_text("a: 2\n")
    assert await watcher.check() is True
    assert calls == ["bad: yes\n", "a: 2\n"] and watcher.reloads == 1


async def test_missing_file_is_retried(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    watcher = ConfigFileWatcher(str(cfg), lambda p: None, interval_s=0.05)
    watcher.prime()
    assert await watcher.check() is False
    cfg.write_text("x: 1\n")
    assert await watcher.check() is True


def test_interval_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="interval must be > 0"):
        ConfigFileWatcher(str(tmp_path / "c"), lambda p: None, interval_s=0)


async def test_rejected_reload_is_not_counted(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("a: 1\n")

    async def reject(p: str) -> bool:
        return False  # what EPPServer.reload_config returns for an invalid config

    watcher = ConfigFileWatcher(str(cfg), reject, interval_s=0.05)
    watcher.prime()
    cfg.write_text("a: 2\n")
    assert await watcher.check() is False and watcher.reloads == 0


async def test_background_polling_delivers_changes(tmp_path: Path) -> None:
    import asyncio

    _configmap_volume(tmp_path, "v: 1\n", 1)
    changed = asyncio.Event()
    watcher = ConfigFileWatcher(str(tmp_path / "config.yaml"), lambda p: changed.set(), interval_s=0.02)
    watcher.start()
    try:
        _configmap_volume(tmp_path, "v: 2\n", 2)
        await asyncio.wait_for(changed.wait(), 10)
    finally:
        await watcher.stop()
    assert watcher.reloads == 1
