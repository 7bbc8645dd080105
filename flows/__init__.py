"""Prefect flows: composition only (map over partitions, call subflows, no torch)."""
