"""Prefect flows of XICH (wiring of the xich package)."""
