"""Prefect flows: the wiring of the medstack DAG."""
