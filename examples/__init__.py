"""Example plugins and the model builder they use (``examples`` from the repo root)."""
