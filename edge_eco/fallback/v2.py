"""Open Inference Protocol v2 (KServe v2 REST) client for a remote generalist.

Works against ``edge-eco serve``, Triton, KServe and MLServer models that take one BYTES input of
texts and return ``label`` (BYTES) and ``confidence`` (FP32/FP64) outputs. One exchange per batch.
Transport, retries, breaker and the label-set check come from :class:`RemoteClient`.
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Any
from urllib.parse import quote

from edge_eco.errors import RemoteProtocolError, RemoteStatusError, shown
from edge_eco.fallback.client import RemoteAnswer, RemoteClient
from edge_eco.fallback.transport import error_message

__all__ = ["V2Client", "RemoteAnswer"]


class V2Client(RemoteClient):
    """Thread-safe client for one model on a v2 REST server (one keep-alive connection per thread)."""

    protocol = "v2"

    def __init__(self, url: str, model: str, *, input_name: str = "text", **options: Any):
        """Describe the remote model; no connection is made until the first call.

        Args:
            url: base URL, ``http://host:port`` or ``https://host[/prefix]``.
            model: the model name on the server.
            input_name: name of the BYTES input tensor on the server.
            options: labels, token, default_timeout_s, ssl_context, breaker, retry, rng
                (see :class:`RemoteClient`).
        Raises:
            ManifestError: the URL, model name or timeout is invalid.
        """
        super().__init__(url, model, **options)
        self.input_name = input_name
        self._model_path = f"/v2/models/{quote(model, safe='')}"
        self._ids = itertools.count(1)

    def _ready_path(self) -> str:
        return f"{self._model_path}/ready"

    def _call(self, texts: list[str], remaining_s: float) -> list[RemoteAnswer]:
        req_id = str(next(self._ids))
        body = json.dumps({
            "id": req_id,
            "inputs": [{"name": self.input_name, "datatype": "BYTES", "shape": [len(texts)], "data": texts}],
            "outputs": [{"name": "label"}, {"name": "confidence"}],
        }).encode()
        status, raw = self.transport.request("POST", f"{self._model_path}/infer", body, remaining_s)
        if status != 200:
            raise RemoteStatusError(f"HTTP {status} from {self.url} model {self.model!r}: {error_message(raw)}",
                                    status)
        return _parse_reply(raw, len(texts), req_id, self.model)


def _flat(data: Any) -> Any:
    if isinstance(data, list) and data and all(isinstance(d, list) for d in data):
        return [d for row in data for d in row]
    return data


def _output(outputs: dict[str, Any], name: str, datatypes: tuple[str, ...], batch: int) -> list:
    out = outputs.get(name)
    if out is None:
        raise RemoteProtocolError(f"reply has no output {name!r} (got {sorted(outputs)})")
    if out.get("datatype") not in datatypes:
        raise RemoteProtocolError(f"output {name!r}: datatype {shown(out.get('datatype'))}, expected one of {datatypes}")
    shape = out.get("shape")
    if (not isinstance(shape, list) or not shape or shape[0] != batch
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape) or math.prod(shape) != batch):
        raise RemoteProtocolError(f"output {name!r}: shape {shown(shape)}, expected [{batch}]")
    data = _flat(out.get("data"))
    if not isinstance(data, list) or len(data) != batch:
        got = len(data) if isinstance(data, list) else type(data).__name__
        raise RemoteProtocolError(f"output {name!r}: expected {batch} values, got {got}")
    return data


def _parse_reply(raw: bytes, batch: int, req_id: str, model: str) -> list[RemoteAnswer]:
    """Validate a v2 infer reply strictly and turn it into answers."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise RemoteProtocolError(f"reply is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise RemoteProtocolError(f"reply must be a JSON object, got {type(doc).__name__}")
    if "id" in doc and doc["id"] != req_id:
        raise RemoteProtocolError(f"reply id {shown(doc['id'])} does not match request id {req_id!r}")
    outputs = doc.get("outputs")
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise RemoteProtocolError("reply 'outputs' must be a list of objects")
    by_name = {o["name"]: o for o in outputs if isinstance(o.get("name"), str)}
    labels = _output(by_name, "label", ("BYTES",), batch)
    confs = _output(by_name, "confidence", ("FP32", "FP64"), batch)
    if not all(isinstance(x, str) for x in labels):
        raise RemoteProtocolError("output 'label': every value must be a string")
    for x in confs:
        # A range check, not math.isfinite: a JSON integer can be too large for a float (and NaN fails it too).
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0.0 <= x <= 1.0:
            raise RemoteProtocolError(f"output 'confidence': {shown(x)} is not a number in [0, 1]")
    name = doc.get("model_name") if isinstance(doc.get("model_name"), str) else model
    version = doc.get("model_version") if isinstance(doc.get("model_version"), str) else ""
    return [RemoteAnswer(label, float(conf), name, version, 0.0) for label, conf in zip(labels, confs)]
