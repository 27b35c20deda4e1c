"""Pool endpoints, their scraped metrics, and the objectives of the pool."""

from epp.datastore.datastore import Datastore, InferenceObjective, PoolSpec
from epp.datastore.endpoint import Endpoint, EndpointMetrics, Role

__all__ = ["Datastore", "Endpoint", "EndpointMetrics", "InferenceObjective", "PoolSpec", "Role"]
