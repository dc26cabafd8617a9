"""Atomic seat work in Redis: the hold store, its keys, its Lua scripts, its client."""
