"""The money service: commands, schema, the sharded batch writer, outbox relay and reconciliation."""
