"""Command line interface (on top of the API)."""
