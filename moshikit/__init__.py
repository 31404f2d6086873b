"""moshikit: one command-line toolkit for Kyutai's Moshi stack."""

__version__ = "0.1.0"
