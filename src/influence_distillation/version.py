"""The package version, in one place (the package root, run manifests and caches read it)."""

__version__ = "0.1.0"
