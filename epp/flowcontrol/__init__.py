"""Flow control: pool saturation detection and admission (shedding, EPP overload guard)."""

from epp.flowcontrol.admission import (
    EPP_OVERLOADED,
    POOL_SATURATED,
    AdmissionConfig,
    AdmissionController,
    AdmissionRejection,
)
from epp.flowcontrol.saturation import SaturationConfig, SaturationDetector

__all__ = [
    "EPP_OVERLOADED",
    "POOL_SATURATED",
    "AdmissionConfig",
    "AdmissionController",
    "AdmissionRejection",
    "SaturationConfig",
    "SaturationDetector",
]
