"""The simulator as a real process (`python -m epp sim`), with a real ZMQ subscriber."""

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import zmq

from epp.prefixcache.block_hash import BlockHasher, wire_hash
from epp.prefixcache.events import AllBlocksCleared, BlockStored, decode_event_batch, decode_seq
from epp.tokenization.tokenizer import SimpleTokenizer
from tests.helpers.procs import PYTHON, free_port, running, wait_http

pytestmark = pytest.mark.integration


def _recv(sub: zmq.Socket, timeout_ms: int = 5000) -> list[bytes]:
    assert sub.poll(timeout_ms), "no KV event batch received"
    return sub.recv_multipart()


def test_two_pods_one_process_with_kv_events(tmp_path: Path) -> None:
    port_a, port_b, kv_a, replay_a = free_port(), free_port(), free_port(), free_port()
    config = tmp_path / "sim.yaml"
    config.write_text(
        "defaults: {time_scale: 0.05, kv_events_bind: true}\n"
        "pods:\n"
        f"  - {{port: {port_a}, name: pod-a, kv_events_endpoint: 'tcp://127.0.0.1:{kv_a}',\n"
        f"      kv_events_replay_endpoint: 'tcp://127.0.0.1:{replay_a}',\n"
        "      kv_events_topic: 'kv@{pod}@{model}'}\n"
        f"  - {{port: {port_b}, name: pod-b, role: decode}}\n"
    )
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    try:
        with running([PYTHON, "-m", "epp", "sim", "--config", str(config)], tmp_path / "sim.log") as proc:
            wait_http(f"http://127.0.0.1:{port_a}/health")
            wait_http(f"http://127.0.0.1:{port_b}/health")
            sub.connect(f"tcp://127.0.0.1:{kv_a}")
            time.sleep(0.3)  # PUB/SUB join
            prompt = "The prefix that the EPP must hash exactly like vLLM does. " * 6
            r = httpx.post(
                f"http://127.0.0.1:{port_a}/v1/completions", json={"prompt": prompt, "max_tokens": 2}
            )
            assert r.status_code == 200 and r.headers["x-sim-pod"] == "pod-a", proc.output()

            topic, seq, payload = _recv(sub)
            assert topic == b"kv@pod-a@meta-llama/Llama-3.1-8B-Instruct" and decode_seq(seq) == 0
            stored = decode_event_batch(payload).events[0]
            assert isinstance(stored, BlockStored)
            token_ids = SimpleTokenizer().encode(prompt)
            expected = BlockHasher("sha256", 16).hash_tokens(token_ids)
            assert stored.block_hashes == [wire_hash(h) for h in expected]
            assert stored.parent_block_hash is None and stored.token_ids == token_ids[: len(expected) * 16]
            assert (stored.block_size, stored.medium) == (16, "GPU")

            assert httpx.post(f"http://127.0.0.1:{port_a}/reset_prefix_cache").status_code == 200
            while True:
                _, seq, payload = _recv(sub)
                if isinstance(decode_event_batch(payload).events[-1], AllBlocksCleared):
                    break

            # vLLM's replay protocol: [b"", start_seq] -> every buffered batch, then seq -1
            dealer = ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.connect(f"tcp://127.0.0.1:{replay_a}")
            dealer.send_multipart([b"", (0).to_bytes(8, "big")])
            seqs = []
            while True:
                assert dealer.poll(5000)
                _, seq_frame, body = dealer.recv_multipart()
                seqs.append(decode_seq(seq_frame))
                if seqs[-1] == -1:
                    assert body == b""
                    break
                decode_event_batch(body)
            assert seqs[0] == 0 and seqs[-1] == -1 and seqs[:-1] == sorted(seqs[:-1])
            dealer.close()

            # pod-b is independent and has no publisher
            state = httpx.get(f"http://127.0.0.1:{port_b}/sim/state").json()
            assert state["role"] == "decode" and state["kv_events_endpoint"] is None

            proc.popen.send_signal(signal.SIGTERM)
            assert proc.popen.wait(10) == 0
    finally:
        sub.close()
        ctx.term()


def test_single_pod_process_exits_on_injected_crash(tmp_path: Path) -> None:
    port = free_port()
    args = [PYTHON, "-m", "epp", "sim", "--port", str(port), "--time-scale", "0.01"]
    with running(args, tmp_path / "crash.log") as proc:
        wait_http(f"http://127.0.0.1:{port}/health")
        assert httpx.post(f"http://127.0.0.1:{port}/sim/faults", json={"crash": True}).status_code == 200
        assert proc.popen.wait(10) == 3


def test_bad_configuration_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            PYTHON,
            "-m",
            "epp",
            "sim",
            "--port",
            str(free_port()),
            "--role",
            "both",
            "--output-len-dist",
            "weird",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ},
    )
    assert result.returncode == 2
    assert "bad output length distribution" in result.stderr
