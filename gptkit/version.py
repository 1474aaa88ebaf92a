"""The package's version string, in the lowest layer so that any module (file headers, the server) can state it."""

__version__ = "0.1.0"
