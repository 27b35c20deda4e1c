"""Flow control: pool saturation detection and admission (shedding, EPP overload guard)."""

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
from epp.flowcontrol.saturation import SaturationConfig, SaturationDetector

__all__ = [
    "DECISION_QUEUE_FULL",
    "DECISION_QUEUE_TIMEOUT",
    "EPP_OVERLOADED",
    "POOL_SATURATED",
    "AdmissionConfig",
    "AdmissionController",
    "AdmissionRejected",
    "AdmissionRejection",
    "SaturationConfig",
    "SaturationDetector",
]
