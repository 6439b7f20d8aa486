"""DNI session broker: gives each website visitor their own tracking number."""

__version__ = "0.1.0"
