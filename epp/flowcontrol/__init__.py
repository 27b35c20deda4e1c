"""flowcontrol."""
