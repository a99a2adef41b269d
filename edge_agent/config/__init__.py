"""Configuration: the schema (schema.py, sections composed from component modules) and
located loading (loader.py). Import the submodules directly; this package does no work."""
