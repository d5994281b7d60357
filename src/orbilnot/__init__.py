"""orbilnot: order, billing and notification services talking over Kafka (see README)."""

__version__ = "0.1.0"
