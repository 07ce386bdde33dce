"""Serving a trained ensemble over HTTP: ``medstack serve-model`` (FastAPI on uvicorn)."""
