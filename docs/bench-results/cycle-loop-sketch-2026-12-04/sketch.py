"""A sketch, not product code: the latency runtime's cycle first pass (LatencyRuntime.cycle at
15071c6, reduced to one candidate's work with stand-in objects) against a variant that reads
the pod's state terms, coefficients and cover from one precomputed tuple (v1), and a loop that
only stores two results per candidate (bare, a floor). Seven rounds, alternated; the ratio
v1 / cur of each round, and the median."""
import timeit, random
class M:  # metrics
    __slots__=("waiting_queue_size","running_requests","kv_cache_usage")
    def __init__(s): s.waiting_queue_size=1; s.running_requests=5; s.kv_cache_usage=0.3
class EP:
    __slots__=("key","metrics","inflight","peer_inflight")
    def __init__(s,i): s.key=f"default/pod-{i}"; s.metrics=M(); s.inflight=2; s.peer_inflight=0
class Model:
    __slots__=("in_linear","new_cover","queue_cover")
    def __init__(s): s.in_linear=(0.2,0.9,1.0,0.01,0.001,0.0,1.0,0.005); s.new_cover=50.0; s.queue_cover=20.0
class T:
    __slots__=("model","state","ledger","terms","line")
    def __init__(s, st): s.model=Model(); s.state=st; s.ledger=(0.0,0.0); s.terms=(0.05,0.0,0.02,0.0)
eps=[EP(i) for i in range(64)]
memo={ep.key: T((1,5,2,0.3)) for ep in eps}
clear_at={}; changed=set()
def cur():
    inputs={}; by_key={}
    all_new=0.5; prefix=None; second=False; prompt_tokens=500
    for ep in eps:
        key = ep.key
        if prefix and (cached_tokens := prefix.get(key, 0)):
            new = 1
        else:
            new = all_new
        earlier = inputs.get(key) if second else None
        if earlier is not None:
            pass
        else:
            wait = 1 if clear_at.get(key) else 0.0
            m = ep.metrics
            pod_state = (m.waiting_queue_size, m.running_requests, ep.inflight + ep.peer_inflight, m.kv_cache_usage)
            kept = memo.get(key)
            if key in changed:
                pass
            if kept is None or kept.state != pod_state:
                pass
            terms = kept
        inputs[key] = (terms, new, wait)
        model = terms.model
        linear = model.in_linear
        if linear is not None and new <= model.new_cover and wait <= model.queue_cover:
            ttft_new, ttft_queue, ttft_speed, ttft_floor, tpot_new, tpot_queue, tpot_speed, tpot_floor = linear
            state_terms = terms.terms
            own_part = state_terms[0] + ttft_new * new + ttft_queue * wait
            ttft = wait + ttft_speed * own_part if own_part > 0.0 else wait
            if ttft < ttft_floor:
                ttft = ttft_floor
            tpot = tpot_speed * (state_terms[2] + tpot_new * new + tpot_queue * wait)
            if tpot < tpot_floor:
                tpot = tpot_floor
            prediction = (ttft, tpot)
        by_key[key] = prediction if not wait else None
    return by_key
def bare():
    # lower bound: just the loop with key + dict stores
    inputs={}; by_key={}
    for ep in eps:
        key = ep.key
        inputs[key] = (key, 0.5, 0.0)
        by_key[key] = (0.1, 0.2)
n=20000
for t in memo.values():
    t.line = (t.terms[0], t.terms[2]) + t.model.in_linear + (t.model.new_cover, t.model.queue_cover)
def v1():
    inputs={}; by_key={}
    new=0.5
    get = memo.get; cget = clear_at.get
    for ep in eps:
        key = ep.key
        wait = 1 if cget(key) else 0.0
        m = ep.metrics
        kept = get(key)
        if key in changed:
            pass
        if kept is None or kept.state != (m.waiting_queue_size, m.running_requests, ep.inflight + ep.peer_inflight, m.kv_cache_usage):
            pass
        inputs[key] = (kept, new, wait)
        line = kept.line
        if line is not None:
            st0, st2, ttft_new, ttft_queue, ttft_speed, ttft_floor, tpot_new, tpot_queue, tpot_speed, tpot_floor, nc, qc = line
            if new <= nc and wait <= qc:
                own_part = st0 + ttft_new * new + ttft_queue * wait
                ttft = wait + ttft_speed * own_part if own_part > 0.0 else wait
                if ttft < ttft_floor:
                    ttft = ttft_floor
                tpot = tpot_speed * (st2 + tpot_new * new + tpot_queue * wait)
                if tpot < tpot_floor:
                    tpot = tpot_floor
                prediction = (ttft, tpot)
        by_key[key] = prediction if not wait else None
    return by_key
import statistics
ratios = []
for rnd in range(7):
    times = {f.__name__: min(timeit.repeat(f, number=n, repeat=5)) / n for f in (cur, v1, bare)}
    ratios.append(times["v1"] / times["cur"])
    print(f"round {rnd + 1}: " + ", ".join(f"{k} {v * 1e6:.2f} us" for k, v in times.items())
          + f", v1/cur {ratios[-1]:.3f}")
print(f"median v1/cur {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f})")
