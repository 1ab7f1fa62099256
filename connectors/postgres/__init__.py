"""PostgreSQL for connector steps: named, parameterised statements of a postgres Connector, one pool per Connector."""

from connectors.postgres.client import PostgresClient
from connectors.postgres.errors import classify

__all__ = ["PostgresClient", "classify"]
