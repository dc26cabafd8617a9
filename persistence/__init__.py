"""Durable state: the SQLite store, its group-commit writer, and the keyspace-event persister."""
