"""The ``rayline`` command line."""

from rayline.cli.app import app, main

__all__ = ["app", "main"]
