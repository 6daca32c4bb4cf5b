"""Command-line entry points: ``nesop-deb`` (build side) and ``nesop-update`` (server side)."""
