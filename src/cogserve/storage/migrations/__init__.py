"""Alembic's script directory for the metadata database; run through ``cogserve.storage.migrate``."""
