"""Scheduler framework: profiles of filters, scorers and a picker, chosen by a profile handler."""
