"""Dataset registry entries: each public module here registers one dataset on import.

Modules whose name starts with ``_`` are helpers and are not auto-imported.
"""
