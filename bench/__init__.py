"""Benchmarks of the support-SLA engine: what a ticket costs and how it performs."""
