"""The in-flight load the concurrency detector reads.

The in-flight ledger (epp/datastore/inflight.py) keeps the read-out on each Endpoint:
requests and estimated tokens this process has in flight to the pod (`inflight`,
`inflight_tokens`) and the same for the other `--workers` of this replica (`peer_inflight`,
`peer_inflight_tokens`). Another source can replace this class behind InflightLoad.
"""

from __future__ import annotations

from epp.datastore.endpoint import Endpoint


class EndpointInflightLoad:
    """InflightLoad read from the counters kept on each Endpoint."""

    def requests(self, ep: Endpoint) -> int:
        return ep.inflight + ep.peer_inflight

    def tokens(self, ep: Endpoint) -> int:
        return ep.inflight_tokens + ep.peer_inflight_tokens


SERVICE_KEY = "flowcontrol.inflight_load"
