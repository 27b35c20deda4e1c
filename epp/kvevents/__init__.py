"""kvevents."""
