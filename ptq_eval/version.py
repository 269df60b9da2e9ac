"""The package's version, importable from any layer (the package itself sits above them all)."""

__version__ = "0.1.0"
