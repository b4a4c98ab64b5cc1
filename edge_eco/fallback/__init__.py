"""Clients for the remote generalist: Open Inference Protocol v2 REST and OpenAI chat completions."""

from edge_eco.fallback.client import RemoteAnswer, RemoteClient
from edge_eco.fallback.openai import OpenAIClient
from edge_eco.fallback.v2 import V2Client

__all__ = ["RemoteAnswer", "RemoteClient", "V2Client", "OpenAIClient", "PROTOCOLS", "client_for"]

PROTOCOLS = {"v2": V2Client, "openai": OpenAIClient}


def client_for(protocol: str, url: str, model: str, **options) -> RemoteClient:
    """A client of the named protocol.

    Args:
        protocol: "v2" or "openai".
        url: the server's base URL; for v2 a model URL ``http://host/v2/models/NAME`` names the model.
        model: the model name (used when the URL does not name one).
        options: passed to the client (labels, token, default_timeout_s, retry, breaker, ...).
    Returns:
        The client; no connection is made yet.
    Raises:
        ManifestError: unknown protocol, bad URL or options.
    """
    from edge_eco.errors import ManifestError

    if protocol not in PROTOCOLS:
        raise ManifestError(f"remote protocol {protocol!r} is not one of {sorted(PROTOCOLS)}")
    if protocol == "v2" and "/v2/models/" in url:
        url, model = url.split("/v2/models/", 1)
        model = model.strip("/")
    return PROTOCOLS[protocol](url, model, **options)
