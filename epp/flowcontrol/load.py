"""The in-flight load the concurrency detector reads.

Today the server counts requests per pod in `Endpoint.inflight` (this process) and
`Endpoint.peer_inflight` (the other workers of this replica), and `Endpoint.inflight_tokens`
for token-aware accounting. The in-flight load tracker of the scheduling layer can replace
this class behind the same InflightLoad protocol.
"""

from __future__ import annotations

from epp.datastore.endpoint import Endpoint


class EndpointInflightLoad:
    """InflightLoad read from the counters kept on each Endpoint."""

    def requests(self, ep: Endpoint) -> int:
        return ep.inflight + ep.peer_inflight

    def tokens(self, ep: Endpoint) -> int:
        return ep.inflight_tokens


SERVICE_KEY = "flowcontrol.inflight_load"
