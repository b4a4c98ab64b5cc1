"""Parsing and validation of Open Inference Protocol v2 infer requests. Pure: no I/O.

Two input kinds: ``text`` (BYTES, one string per element) and ``features`` (FP32, a dense vector
per row: shape ``[batch, dim]``). Everything wrong is a :class:`RequestError` naming what was
wrong and what was expected, so the server answers 400 with that message.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from typing import Any

from .errors import RequestError, shown

__all__ = ["InferRequest", "parse_infer_request", "OUTPUT_NAMES"]

OUTPUT_NAMES = ("label", "confidence")
_FLOAT_MAX = sys.float_info.max


def _finite_number(x: Any) -> bool:
    """An int or float that is a finite float: a JSON integer can be past float range (math.isfinite
    raises OverflowError on it), and NaN fails the comparisons."""
    return not isinstance(x, bool) and isinstance(x, (int, float)) and -_FLOAT_MAX <= x <= _FLOAT_MAX


@dataclass(frozen=True)
class InferRequest:
    """A validated infer request: texts or feature rows (exactly one of them), and its options."""

    texts: tuple[str, ...] | None
    rows: tuple[tuple[float, ...], ...] | None
    req_id: str | None
    outputs: tuple[str, ...]
    deadline_ms: float | None

    @property
    def batch(self) -> int:
        """Number of items in the request."""
        return len(self.texts if self.texts is not None else self.rows)


def _shape(inp: dict, name: str) -> list[int]:
    shape = inp.get("shape")
    if not isinstance(shape, list) or not shape or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise RequestError(f"input {name!r}: shape must be a non-empty list of non-negative ints, got {shown(shape)}")
    return shape


def _flat(data: Any, name: str, depth: int = 0) -> list:
    """The row-major flattening of data; clients may nest lists to the tensor's shape."""
    if not isinstance(data, list):
        raise RequestError(f"input {name!r}: 'data' must be a list")
    if data and all(isinstance(d, list) for d in data):
        if depth > 8:
            raise RequestError(f"input {name!r}: 'data' is nested too deeply")
        return [x for row in data for x in _flat(row, name, depth + 1)]
    return data


def _texts(inp: dict, max_batch: int, max_text_bytes: int) -> tuple[str, ...]:
    if inp.get("datatype") != "BYTES":
        raise RequestError(f"input 'text': datatype must be 'BYTES', got {shown(inp.get('datatype'))}")
    shape = _shape(inp, "text")
    data = _flat(inp.get("data"), "text")
    if not all(isinstance(d, str) for d in data):
        raise RequestError("input 'text': every element of 'data' must be a string")
    if len(data) != math.prod(shape):
        raise RequestError(f"input 'text': shape {shown(shape)} holds {shown(math.prod(shape))} elements, "
                           f"data has {len(data)}")
    if not data:
        raise RequestError("input 'text': no texts given")
    if len(data) > max_batch:
        raise RequestError(f"input 'text': batch of {len(data)} is over the limit of {max_batch}")
    for i, text in enumerate(data):
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > max_text_bytes:
            raise RequestError(f"input 'text' element {i}: {size} bytes is over the limit of {max_text_bytes}")
    return tuple(data)


def _rows(inp: dict, max_batch: int, dim: int) -> tuple[tuple[float, ...], ...]:
    if inp.get("datatype") != "FP32":
        raise RequestError(f"input 'features': datatype must be 'FP32', got {shown(inp.get('datatype'))}")
    shape = _shape(inp, "features")
    if len(shape) != 2 or shape[1] != dim:
        raise RequestError(f"input 'features': shape must be [batch, {dim}], got {shown(shape)}")
    data = _flat(inp.get("data"), "features")
    if len(data) != shape[0] * dim:
        raise RequestError(f"input 'features': shape {shown(shape)} holds {shown(shape[0] * dim)} elements, "
                           f"data has {len(data)}")
    if not all(_finite_number(x) for x in data):
        raise RequestError("input 'features': every element must be a finite number")
    if not shape[0]:
        raise RequestError("input 'features': no rows given")
    if shape[0] > max_batch:
        raise RequestError(f"input 'features': batch of {shape[0]} is over the limit of {max_batch}")
    return tuple(tuple(float(x) for x in data[r * dim:(r + 1) * dim]) for r in range(shape[0]))


def parse_infer_request(body: bytes, max_batch: int, *, max_text_bytes: int = 1 << 24,
                        feature_dim: int | None = None, text: bool = True) -> InferRequest:
    """Parse and validate a v2 infer request body.

    Args:
        body: the raw JSON request body.
        max_batch: the largest number of texts or rows accepted.
        max_text_bytes: the largest UTF-8 size of one text.
        text: whether a ``text`` input is accepted (False for an ecology that answers only windows).
        feature_dim: the length of a feature row when the model takes FP32 ``features``; None when
            it takes only ``text``.
    Returns:
        The validated request.
    Raises:
        RequestError: naming what was wrong and what was expected.
    """
    try:
        req = json.loads(body)
    except RecursionError as exc:
        raise RequestError("malformed JSON body: nested too deeply") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(f"malformed JSON body: {exc}") from exc
    if not isinstance(req, dict):
        raise RequestError(f"request body must be a JSON object, got {type(req).__name__}")
    req_id = req.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise RequestError("'id' must be a string")
    inputs = req.get("inputs")
    accepted = (["text"] if text else []) + (["features"] if feature_dim else [])
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(f"'inputs' must be a non-empty list with one input named {' or '.join(map(repr, accepted))}")
    names = [i.get("name") if isinstance(i, dict) else None for i in inputs]
    if len(names) != 1 or names[0] not in accepted:
        raise RequestError(f"expected exactly one input named {' or '.join(map(repr, accepted))}, got {shown(names)}")
    texts = rows = None
    if names[0] == "text":
        texts = _texts(inputs[0], max_batch, max_text_bytes)
    else:
        rows = _rows(inputs[0], max_batch, feature_dim)
    outputs = req.get("outputs")
    wanted: tuple[str, ...] = OUTPUT_NAMES
    if outputs:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            raise RequestError("'outputs' must be a list of objects with a 'name'")
        wanted = tuple(o.get("name") for o in outputs)
        unknown = [n for n in wanted if n not in OUTPUT_NAMES]
        if unknown:
            raise RequestError(f"unknown output(s) {shown(unknown)}; this model has {list(OUTPUT_NAMES)}")
    params = req.get("parameters")
    params = {} if params is None else params  # absent or null; [] or "" is refused
    if not isinstance(params, dict):
        raise RequestError(f"'parameters' must be an object, got {type(params).__name__}")
    deadline_ms = params.get("deadline_ms")
    if deadline_ms is not None and (not _finite_number(deadline_ms) or deadline_ms <= 0):
        raise RequestError(f"parameter 'deadline_ms' must be a positive number, got {shown(deadline_ms)}")
    return InferRequest(texts, rows, req_id, wanted, float(deadline_ms) if deadline_ms is not None else None)
