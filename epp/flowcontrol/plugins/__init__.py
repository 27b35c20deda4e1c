"""Flow-control plugins (saturation detectors, fairness and ordering policies), one per file,
registered by type name in the same registry as the scheduling plugins."""
