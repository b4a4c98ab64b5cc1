"""Clients for the remote generalist: Open Inference Protocol v2 REST."""

from edge_eco.fallback.v2 import RemoteAnswer, V2Client

__all__ = ["RemoteAnswer", "V2Client"]
