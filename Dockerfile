# EPP image: `docker build -t llm-epp:dev .` then `kind load docker-image llm-epp:dev`.
# Two stages so the runtime image carries the installed package, not pip caches or sources.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/epp
COPY pyproject.toml README.md* ./
COPY epp ./epp
COPY protos ./protos
# The admin API stubs are generated (not committed): make them before building the wheel.
RUN /opt/epp/bin/pip install grpcio-tools && /opt/epp/bin/python -m epp.admin.protogen \
 && /opt/epp/bin/pip install . \
 && /opt/epp/bin/python -m compileall -q /opt/epp/lib
# The latency modules compiled with mypyc (epp/latency/native.py) from these same sources, in a
# throwaway venv with mypy and a C compiler: only the build reaches the runtime image, and the
# EPP loads it while its manifest matches the installed sources. Best effort: if a step fails,
# the image runs the .py modules (same routing, more CPU per predicted-latency decision).
RUN { apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
      && python -m venv /tmp/mypyc && /tmp/mypyc/bin/pip install . mypy types-PyYAML \
      && EPP_LATENCY_NATIVE_DIR=/opt/epp/latency-native /tmp/mypyc/bin/python -m epp.latency.build_native build --quiet; } \
 || echo "warning: the compiled latency modules were not built; the image runs the .py modules"

FROM python:3.11-slim
LABEL org.opencontainers.image.title="llm-epp" \
      org.opencontainers.image.description="LLM-aware Endpoint Picker (Envoy ext_proc) for vLLM InferencePools" \
      org.opencontainers.image.licenses="Apache-2.0"
# The root filesystem is read-only in the Deployment: no bytecode writes at runtime.
ENV PATH=/opt/epp/bin:$PATH \
    EPP_LATENCY_NATIVE_DIR=/opt/epp/latency-native \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EPP_HOST=0.0.0.0
COPY --from=build /opt/epp /opt/epp
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin epp
USER 10001:10001
# 9002 ext_proc gRPC (+ gRPC health; TLS in Kubernetes mode), 9003 HTTP /healthz /readyz,
# 9004 plaintext gRPC health for kubelet probes (--grpc-health-port), 9090 Prometheus /metrics
EXPOSE 9002 9003 9004 9090
ENTRYPOINT ["epp", "serve"]
