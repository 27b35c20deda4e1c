"""Cost of sharing one request between two workers: publish and flush (on the decision path) and the
peer's handling of its three messages, with the real PeerBus sockets."""
import asyncio, statistics, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, ".")  # run from the repository root: python docs/bench-results/latency-2026-12-04-workers/sharing-cost.py
from epp.latency.runtime import LatencyRuntime
from epp.latency.sharing import LatencySharing
from epp.scheduling.types import CycleState
from epp.server.peers import PeerBus
from tests.unit.latency.test_runtime import train
from tests.unit.scheduling.sched_fakes import endpoint, request

async def main() -> None:
    d = Path(tempfile.mkdtemp())
    buses = [PeerBus(d, i, 2) for i in range(2)]
    rts = [LatencyRuntime(), LatencyRuntime()]
    for b, rt in zip(buses, rts):
        train(rt); LatencySharing.attach(b, rt); await b.start()
    pods = [endpoint(f"p{i}", port=8000 + i) for i in range(4)]
    sender, receiver = rts
    publish, handle = [], []
    for rep in range(5):
        reqs = [request("x" * 4000, stream=True, max_tokens=64, request_id=str(i)) for i in range(2000)]
        # publish cost: on_dispatch with and without the sharing
        t0 = time.perf_counter_ns()
        for i, r in enumerate(reqs[:1000]):
            sender.on_dispatch(CycleState(), r, pods[i % 4])
        sender.peers.bus.flush()
        t1 = time.perf_counter_ns()
        sharing, sender.peers = sender.peers, None
        for i, r in enumerate(reqs[1000:]):
            sender.on_dispatch(CycleState(), r, pods[i % 4])
        t2 = time.perf_counter_ns()
        sender.peers = sharing
        publish.append(((t1 - t0) - (t2 - t1)) / 1000 / 1000)
        # the receiver's handling: drain its socket, timed
        await asyncio.sleep(0)  # let nothing run yet
        loop = asyncio.get_running_loop()
        loop.remove_reader(receiver.peers.bus._sock.fileno())
        t0 = time.perf_counter_ns(); receiver.peers.bus._on_readable(); t1 = time.perf_counter_ns()
        n = receiver.peer_records()
        for r in reqs[:1000]:
            sender.on_first_byte(r, 200)
            sender.on_complete(r, {"status": 200, "completion_tokens": 64})
        sender.peers.bus.flush()
        t2 = time.perf_counter_ns(); receiver.peers.bus._on_readable(); t3 = time.perf_counter_ns()
        loop.add_reader(receiver.peers.bus._sock.fileno(), receiver.peers.bus._on_readable)
        handle.append(((t1 - t0) + (t3 - t2)) / n / 1000)
        for r in reqs[1000:]:
            sender.on_complete(r, {"status": 200, "completion_tokens": 64})
        sender.peers.bus.flush(); receiver.peers.bus._on_readable()
        print(f"rep {rep}: publish {publish[-1]:.1f} us/request, peer handling {handle[-1]:.1f} us/request "
              f"({n} heard, {receiver.peer_records()} open after)")
    print(f"median publish {statistics.median(publish):.1f} us (range {min(publish):.1f}-{max(publish):.1f}), "
          f"handling {statistics.median(handle):.1f} us (range {min(handle):.1f}-{max(handle):.1f}) per request")
    for b in buses: await b.stop()
    for rt in rts: rt.predictor.stop()

asyncio.run(main())
