"""Kedro pipelines: thin wiring over the library modules in ``rodpo``."""
