"""Dependency-light client (numpy, msgpack, websockets only): never imports torch."""
