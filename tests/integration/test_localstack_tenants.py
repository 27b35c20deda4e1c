"""`make run TENANTS=1`: the example keys file and flow-control config start, and the curl
printed for each tenant works (run with the real curl) while a keyless request gets 401."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from epp.localstack.cli import _tenant_curls, _with_tenants
from epp.localstack.stack import LocalStack, StackConfig

pytestmark = pytest.mark.integration


def test_tenants_stack_and_printed_curls(tmp_path: Path) -> None:
    curl = shutil.which("curl")
    assert curl is not None, "curl is required: apt-get install -y curl"
    cfg = StackConfig(ports_free=True, run_dir=tmp_path, pods=1, time_scale=0.1, kv_events=False)
    _with_tenants(cfg)
    stack = LocalStack(cfg)
    try:
        stack.start(timeout=60)
        text = _tenant_curls(stack.url, cfg.model)
        commands = re.findall(r"curl .*?\}'", text.replace("\\\n", " "), flags=re.S)
        assert len(commands) == 2
        for command in commands:
            out = subprocess.run([*shlex.split(command), "-w", "\n%{http_code}"], capture_output=True,
                                 text=True, timeout=30, check=True).stdout
            body, status = out.rsplit("\n", 1)
            assert status == "200", body
            assert json.loads(body)["object"] == "text_completion"
        keyless = re.sub(r"-H 'authorization: [^']*' ", "", commands[0])
        out = subprocess.run([*shlex.split(keyless), "-w", "\n%{http_code}"], capture_output=True,
                             text=True, timeout=30, check=True).stdout
        assert out.rsplit("\n", 1)[1] == "401"
    finally:
        stack.stop()
