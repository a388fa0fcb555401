"""Adaptation methods, one module per method, each named after it (see README's notebook map)."""
