"""The Typer CLI: the composition root, the only package that imports everything."""

from volley.cli.app import app, main

__all__ = ["app", "main"]
