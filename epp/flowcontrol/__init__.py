"""Flow control: saturation detectors, the flow-control queue (priority bands, fairness,
ordering, limits) and admission (shedding, EPP overload guard)."""

from epp.flowcontrol.admission import (
    DECISION_QUEUE_FULL,
    DECISION_QUEUE_TIMEOUT,
    EPP_OVERLOADED,
    POOL_SATURATED,
    AdmissionConfig,
    AdmissionController,
    AdmissionRejected,
    AdmissionRejection,
)
from epp.flowcontrol.saturation import PoolSaturation, SaturationConfig

__all__ = [
    "DECISION_QUEUE_FULL",
    "DECISION_QUEUE_TIMEOUT",
    "EPP_OVERLOADED",
    "POOL_SATURATED",
    "AdmissionConfig",
    "AdmissionController",
    "AdmissionRejected",
    "AdmissionRejection",
    "PoolSaturation",
    "SaturationConfig",
]
