"""Predicted-latency routing with per-request SLOs (docs/latency-routing.md).

- slo.py: the request's TTFT / TPOT targets (headers, per-objective defaults);
- predictor.py: the online latency model of one pool (features, background training,
  warm start from a saved state);
- runtime.py: the one LatencyRuntime per EPP process, shared by the plugins through
  PluginContext.services: per-cycle predictions, the per-pod ledger of requests still
  waiting for their first byte, the request records that turn observations into samples,
  and the Prometheus metrics.

The plugins live with the other scheduling plugins (one file each, registered by type name):
predicted-latency-producer, latency-scorer, slo-headroom-filter, latency-slo-admitter.
"""

from epp.latency.native import use_compiled_modules

# Before any latency module is imported: they load from the mypyc build when it matches the
# sources (epp/latency/native.py), else as the .py files here.
use_compiled_modules()
