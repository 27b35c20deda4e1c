"""Traffic splitting and rollouts: GIE's InferenceModelRewrite, sticky weighted assignment
and an SLO guard that rolls a canary back (docs/rollouts.md)."""
