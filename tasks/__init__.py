"""Thin Prefect tasks: resolve config, call one ``e4t`` function, return URIs and small dicts."""
