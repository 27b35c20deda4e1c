"""The EPP's observability: Prometheus metrics (`metrics`, `fastmetrics`, `exposition`),
health/readiness (`health`), structured logs (`logging`), tracing (`tracing`).

Import from the submodules. This package imports none of them, so that a process that needs
one light piece (the simulator: `fastmetrics`) does not pay for OpenTelemetry and the health
server on every start. grpc_health (grpc.health.v1) needs the grpcio-health-checking package.
"""
