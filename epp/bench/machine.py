"""Facts about the machine a benchmark ran on (printed and written into the report)."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass

from epp.localstack.stack import envoy_binary


@dataclass(slots=True, frozen=True)
class MachineFacts:
    cpu_model: str
    cpus: int  # logical CPUs this process may run on
    python: str
    envoy: str
    vllm_router: str
    kernel: str
    load_average: str

    def lines(self) -> list[str]:
        return [
            f"CPU: {self.cpu_model}, {self.cpus} logical CPUs available",
            f"Python: {self.python}",
            f"Envoy: {self.envoy}",
            f"vllm-router: {self.vllm_router}",
            f"Kernel: {self.kernel}",
            f"Load average at start: {self.load_average}",
        ]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _first_line(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({type(e).__name__})"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[-1].strip() if text else "unknown"


def envoy_version() -> str:
    try:
        line = _first_line([envoy_binary(), "--version"])
    except RuntimeError as e:
        return f"unavailable ({e})"
    # "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL" -> keep the informative part
    return line.split("version:", 1)[-1].strip()


def vllm_router_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vllm-router")
    except PackageNotFoundError:
        return "not installed"


def machine_facts() -> MachineFacts:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 0
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "unknown"
    return MachineFacts(
        cpu_model=_cpu_model(),
        cpus=cpus,
        python=f"{platform.python_implementation()} {platform.python_version()}",
        envoy=envoy_version(),
        vllm_router=vllm_router_version(),
        kernel=f"{platform.system()} {platform.release()}",
        load_average=load,
    )
