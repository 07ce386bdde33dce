"""Thin Prefect tasks, one per DAG node, each wrapping a plain function."""
