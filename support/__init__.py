"""Shared models and pure rules of the support SLA engine (no I/O, no clock)."""
