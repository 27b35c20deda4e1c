"""Body-based routing (BBR): the gateway's model -> pool stage (docs/multi-model.md)."""
