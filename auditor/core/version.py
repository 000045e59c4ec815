"""The package version, importable without anything else of auditor."""

__version__ = "0.1.0"
