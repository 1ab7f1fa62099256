"""The engine's durable store: schema, connections, migrations, idempotency records and the outbox."""
