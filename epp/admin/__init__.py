"""The EPP's own admin API (protos/epp/v1/admin.proto): Explain, WatchDecisions, GetPool.

See docs/admin-api.md. Modules: protogen/proto (generated stubs), explain/decision (traced
scheduling cycles and their Decision message), feed (the ext_proc handler's hook), stats
(per-endpoint counters), service/server (the gRPC service on its own port), cli (`epp
explain`, `epp top`).
"""
