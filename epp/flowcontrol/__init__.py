"""Flow control: saturation detectors, the flow-control queue (priority bands, fairness,
ordering, limits) and admission (shedding, EPP overload guard)."""

from epp.flowcontrol.admission import (
    EPP_OVERLOADED,
    POOL_SATURATED,
    AdmissionConfig,
    AdmissionController,
    AdmissionRejection,
)
from epp.flowcontrol.saturation import PoolSaturation, SaturationConfig

__all__ = [
    "EPP_OVERLOADED",
    "POOL_SATURATED",
    "AdmissionConfig",
    "AdmissionController",
    "AdmissionRejection",
    "PoolSaturation",
    "SaturationConfig",
]
