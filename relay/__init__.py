"""relay: a federated message relay with signed envelopes and per-message data residency."""

__version__ = "0.1.0"
