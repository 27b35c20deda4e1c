"""`epp serve --workers N`: N EPP processes sharing the ext_proc port (SO_REUSEPORT).

The supervisor re-runs the same command line once per worker with `--worker-id i
--worker-count N --peer-dir D`, forwards SIGTERM/SIGINT, and restarts a worker that dies
(at most `max_restarts` times in a minute, then it gives up and stops them all so the
orchestrator sees the failure). Python executes one thread at a time, so workers are how
one EPP uses several cores.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("epp.server.workers")


def run_supervisor(argv: Sequence[str], workers: int, max_restarts: int = 5) -> int:
    peer_dir = Path(tempfile.mkdtemp(prefix="epp-peers-"))
    base = [sys.executable, "-m", "epp", "serve", *argv]

    def spawn(i: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen([*base, "--worker-id", str(i), "--worker-count", str(workers),
                                 "--peer-dir", str(peer_dir)])

    procs = [spawn(i) for i in range(workers)]
    log.info("started %d EPP workers (pids %s)", workers, ", ".join(str(p.pid) for p in procs))
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    restarts: list[float] = []
    code = 0
    try:
        while not stopping:
            time.sleep(0.2)
            for i, p in enumerate(procs):
                rc = p.poll()
                if rc is None or stopping:
                    continue
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < 60] + [now]
                if len(restarts) > max_restarts:
                    log.error("worker %d exited with %d; too many restarts, stopping", i, rc)
                    code = rc or 1
                    on_signal(signal.SIGTERM, None)
                    break
                log.warning("worker %d exited with %d; restarting it", i, rc)
                procs[i] = spawn(i)
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(15)
            if p.poll() is None:
                p.kill()
    finally:
        for f in peer_dir.glob("*"):
            f.unlink(missing_ok=True)
        peer_dir.rmdir()
    return code
