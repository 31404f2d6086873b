"""moshikit's version (the package re-exports it as ``moshikit.__version__``)."""

__version__ = "0.1.0"
