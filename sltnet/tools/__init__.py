"""Command-line tools (``sltnet-*`` console scripts)."""
