"""The package's version (its one home: the root, pyproject and run metadata read it)."""

__version__ = "0.1.0"
