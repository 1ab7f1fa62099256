"""Alembic migrations of the engine's store, shipped inside the package and run at start (``upgrade head``)."""
