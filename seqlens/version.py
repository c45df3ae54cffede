"""The library version, in a module of its own so that the trainer can record it without importing
the package root (which imports the models)."""

__version__ = "0.1.0"
