"""Heimdall streamer: live IQ from several receivers in, transmitter positions with uncertainty out."""

__version__ = "0.1.0"
