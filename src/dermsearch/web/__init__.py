"""Web UI and REST API (FastAPI), on the same Searcher API as the CLI."""
