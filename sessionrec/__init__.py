"""The `sessionrec` command line and its settings loader."""

__version__ = "0.1.0"
