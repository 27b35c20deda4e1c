"""One-off diagnostics inside the EPP of the overhead stack (loaded by Python's site hook when
this directory is on PYTHONPATH; only in an `epp serve` process, only with DIAG_ON=1):
SIGUSR1 appends the latency runtime's state and the prefix scorer's holders of each chat's
first block to $DIAG_OUT (default /tmp/diag/out.jsonl), and with DIAG_PICKLE=1 pickles the
prefix scorer's LRUs to /tmp/diag/lru-<time>.pkl (for match-bench.py); SIGUSR2 starts, then
stops and saves, a cProfile of the event loop's thread (/tmp/diag/prof<N>.pstats).
Driven by drive.py; see docs/latency-routing.md, "Cost per decision"."""
import gc, json, os, signal, sys, threading, time, math

os.makedirs("/tmp/diag", exist_ok=True)

def _dump(*_):
    try:
        from epp.latency.runtime import LatencyRuntime
    except Exception as e:
        return
    out = []
    for o in gc.get_objects():
        if type(o).__name__ == "LatencyRuntime":
            rt = o
            now = rt.clock()
            d = {}
            d["clear_at_nonzero"] = sum(1 for v in rt.queue_clear_at.values() if v)
            d["clear_at_future"] = sum(1 for v in rt.queue_clear_at.values() if v and v > now)
            d["pending_order_sizes"] = sum(len(v) for v in rt._pending_order.values())
            d["records"] = len(rt._records)
            d["state_terms"] = len(rt._state_terms)
            d["pending_prefill_nonzero"] = sum(1 for v in rt.pending_prefill.values() if v > 1e-9)
            d["inflight_decode_nonzero"] = sum(1 for v in rt.inflight_decode.values() if v > 1e-9)
            d["last_step_members"] = sum(1 for v in rt._last_step.values() if v is not None and v.members)
            d["step_start_future"] = sum(1 for v in rt._step_start.values() if v > now)
            p = rt.predictor
            lin = 0; inl = 0; covers = []
            pods = set(rt.queue_clear_at) | set(rt._state_terms)
            for k in pods:
                m = p.pod_model(k)
                if m.in_linear is not None: lin += 1
                covers.append((round(m.new_cover, 2), round(m.queue_cover, 2), round(m.step_cover, 2)))
            d["pods"] = len(pods); d["linear"] = lin
            d["covers_sample"] = sorted(set(covers))[:8]
            d["version"] = p.version
            out.append(d)
    try:
        from epp.bench.overhead import chat_bodies
        from epp.scheduling.types import LLMRequest
        from epp.scheduling.plugins.prefix_cache_scorer import prefix_block_hashes
        import statistics as st
        for o in gc.get_objects():
            if type(o).__name__ == "PrefixCacheScorer":
                if os.environ.get("DIAG_PICKLE"):
                    import pickle
                    with open(f"/tmp/diag/lru-{int(time.time())}.pkl", "wb") as f:
                        pickle.dump({k: list(v) for k, v in o._lru.items()}, f)
                holders=[]; lens=[]; nblocks=[]
                for b in chat_bodies():
                    body=json.loads(b)
                    text="".join(f"{m['role']}:{m['content']}\n" for m in body["messages"])
                    r = LLMRequest.__new__(LLMRequest)
                    hs = prefix_block_hashes(text, body["model"], 64, 256)
                    nblocks.append(len(hs))
                    h=[k for k,l in o._lru.items() if hs and hs[0] in l]
                    holders.append(len(h))
                    lens.append(st.mean([o.match_length(k,hs) for k in h]) if h else 0)
                out.append({"prefix": o.name, "lru_sizes": sorted(len(l) for l in o._lru.values())[::8],
                            "holders_mean": st.mean(holders), "match_mean": st.mean(lens), "nblocks": st.mean(nblocks)})
    except Exception as e:
        out.append({"err": repr(e)})
    with open(os.environ.get("DIAG_OUT", "/tmp/diag/out.jsonl"), "a") as f:
        f.write(json.dumps({"t": time.time(), "rts": out}, default=str) + "\n")

if b"serve" in open("/proc/self/cmdline","rb").read() and os.environ.get("DIAG_ON"):
    try:
        signal.signal(signal.SIGUSR1, _dump)
    except Exception:
        pass

_prof = [None, 0]
def _toggle(*_):
    import cProfile, pstats
    if _prof[0] is None:
        _prof[0] = cProfile.Profile(); _prof[0].enable()
    else:
        _prof[0].disable(); _prof[1] += 1
        _prof[0].dump_stats(f"/tmp/diag/prof{_prof[1]}.pstats"); _prof[0] = None

if b"serve" in open("/proc/self/cmdline","rb").read() and os.environ.get("DIAG_ON"):
    try:
        signal.signal(signal.SIGUSR2, _toggle)
    except Exception:
        pass
