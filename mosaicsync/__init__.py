"""mosaicsync: deploy tool for the Mosaic hosting platform."""

__version__ = "0.1.0"
