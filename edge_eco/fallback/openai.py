"""OpenAI-compatible chat-completions client: an LLM generalist picks one label of the label set.

Works against any server that follows the chat-completions API (vLLM, llama.cpp server, TGI,
Ollama's /v1, hosted APIs): ``POST {url}/chat/completions`` with ``model`` and ``messages``; the
reply's ``choices[0].message.content`` must be exactly one label of the ecology's label set
(surrounding whitespace aside). Anything else -- prose, two labels, a label not in the set, a
refusal, a truncated reply -- is a failed call (:class:`RemoteProtocolError`), never an answer.
The URL is the API base as in OpenAI's clients, e.g. ``http://127.0.0.1:8000/v1``.

Chat completions take one conversation per request, so a batch is one exchange per text within
the same deadline. Confidence: ``exp`` of the summed token log-probabilities when the server
returns them (``logprobs=True``), else ``default_confidence``.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from edge_eco.errors import ManifestError, RemoteProtocolError, RemoteStatusError, RemoteUnavailable
from edge_eco.fallback.client import RemoteAnswer, RemoteClient
from edge_eco.fallback.transport import error_message

__all__ = ["OpenAIClient", "system_prompt"]


def system_prompt(labels: tuple[str, ...]) -> str:
    """The instruction sent with every request: the task and the allowed labels."""
    return ("You are a text classifier. Reply with exactly one label from the list below and nothing "
            "else: no punctuation, no explanation.\nLabels: " + ", ".join(labels))


class OpenAIClient(RemoteClient):
    """Thread-safe chat-completions client (one keep-alive connection per thread)."""

    protocol = "openai"

    def __init__(self, url: str, model: str, *, labels: tuple[str, ...], logprobs: bool = False,
                 default_confidence: float = 1.0, **options: Any):
        """Describe the remote model; no connection is made until the first call.

        Args:
            url: API base URL, e.g. ``https://host/v1``.
            model: the model name the server expects.
            labels: the ecology's label set (required: the generalist must pick one of them).
            logprobs: ask for token log-probabilities and derive the confidence from them.
            default_confidence: the confidence of an answer without log-probabilities.
            options: token, default_timeout_s, ssl_context, breaker, retry, rng (see RemoteClient).
        Raises:
            ManifestError: no labels, a bad URL, model name, timeout or confidence.
        """
        if not labels:
            raise ManifestError("the openai protocol needs the ecology's label set")
        if not 0.0 <= default_confidence <= 1.0:
            raise ManifestError(f"default_confidence must be in [0, 1], got {default_confidence!r}")
        super().__init__(url, model, labels=labels, **options)
        self.logprobs, self.default_confidence = logprobs, float(default_confidence)
        self._system = system_prompt(self.labels)
        # A token is at least one character: the longest label always fits, with room for spaces.
        self._max_tokens = max(len(x) for x in self.labels) + 8

    def _ready_path(self) -> str:
        return "/models"

    def _call(self, texts: list[str], remaining_s: float) -> list[RemoteAnswer]:
        deadline = time.perf_counter() + remaining_s
        answers = []
        for text in texts:
            left_s = deadline - time.perf_counter()
            if left_s <= 0:
                raise RemoteUnavailable(f"deadline spent after {len(answers)} of {len(texts)} texts")
            answers.append(self._one(text, left_s))
        return answers

    def _one(self, text: str, timeout_s: float) -> RemoteAnswer:
        req: dict[str, Any] = {"model": self.model, "temperature": 0, "max_tokens": self._max_tokens, "n": 1,
                               "messages": [{"role": "system", "content": self._system},
                                            {"role": "user", "content": text}]}
        if self.logprobs:
            req["logprobs"] = True
        status, raw = self.transport.request("POST", "/chat/completions", json.dumps(req).encode(), timeout_s)
        if status != 200:
            raise RemoteStatusError(f"HTTP {status} from {self.url} model {self.model!r}: {error_message(raw)}",
                                    status)
        label, confidence, model = parse_completion(raw, self.default_confidence)
        return RemoteAnswer(label, confidence, model or self.model, "", 0.0)


def parse_completion(raw: bytes, default_confidence: float) -> tuple[str, float, str]:
    """Validate a chat-completion reply strictly.

    Args:
        raw: the reply body.
        default_confidence: the confidence when the reply has no log-probabilities.
    Returns:
        (the stripped content, its confidence, the reply's model name or "").
    Raises:
        RemoteProtocolError: not JSON, not a chat completion, no text content, truncated, a refusal.
    """
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise RemoteProtocolError(f"reply is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise RemoteProtocolError(f"reply must be a JSON object, got {type(doc).__name__}")
    choices = doc.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise RemoteProtocolError("reply 'choices' must be a non-empty list of objects")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise RemoteProtocolError("reply choices[0].message must be an object")
    if isinstance(message.get("refusal"), str) and message["refusal"]:
        raise RemoteProtocolError(f"the model refused: {message['refusal'][:120]!r}")
    content = message.get("content")
    if not isinstance(content, str):
        raise RemoteProtocolError(f"reply choices[0].message.content must be a string, got "
                                  f"{type(content).__name__}")
    if choice.get("finish_reason") == "length":
        raise RemoteProtocolError(f"reply was cut at max_tokens: {content[:80]!r}")
    confidence = default_confidence
    lp = choice.get("logprobs")
    if isinstance(lp, dict) and isinstance(lp.get("content"), list) and lp["content"]:
        try:
            total = sum(float(t["logprob"]) for t in lp["content"])
        except (KeyError, TypeError, ValueError, OverflowError) as exc:  # OverflowError: an int past float range
            raise RemoteProtocolError(f"reply logprobs are malformed: {exc!r}") from exc
        if not math.isfinite(total) or total > 1e-6:
            raise RemoteProtocolError(f"reply logprobs sum to {total!r}, not a log-probability")
        confidence = math.exp(min(total, 0.0))
    model = doc.get("model") if isinstance(doc.get("model"), str) else ""
    return content.strip(), confidence, model
