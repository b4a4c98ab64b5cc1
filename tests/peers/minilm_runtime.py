"""A custom Seldon MLServer runtime serving the MiniLM generalist bundle (models/minilm) over v2.

Loaded by MLServer from the model folder (model-settings.json: "implementation":
"minilm_runtime.MiniLMRuntime", parameters.uri = the bundle folder). Input ``text`` (BYTES), outputs
``label`` (BYTES) and ``confidence`` (FP32): the same contract as ``edge-eco serve``. Runs in the
peers venv (mlserver, onnxruntime, tokenizers); it does not import edge_eco.
"""

import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse
from tokenizers import Tokenizer


class MiniLMRuntime(MLModel):
    async def load(self) -> bool:
        root = Path(self.settings.parameters.uri)
        entry = tomllib.loads((root / "ecology.toml").read_text())["models"][0]
        self.labels = entry["labels"]
        self.temperature = entry["calibration"]["temperature"]
        self.reject_below, self.reject = entry["calibration"].get("reject_below", 0.0), "oos"
        self.tok = Tokenizer.from_file(str(root / entry["tokenizer"]))
        self.tok.enable_truncation(entry.get("max_tokens", 128))
        self.tok.enable_padding(length=None)
        self.session = ort.InferenceSession(str(root / entry["path"]), providers=["CPUExecutionProvider"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        texts = StringCodec.decode_input(payload.inputs[0])
        enc = self.tok.encode_batch(texts)
        feeds = {name: np.array([getattr(e, attr) for e in enc], np.int64) for name, attr in
                 (("input_ids", "ids"), ("attention_mask", "attention_mask"), ("token_type_ids", "type_ids"))}
        z = self.session.run(None, feeds)[0] / self.temperature
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        best = p.argmax(axis=1)
        conf = p[np.arange(len(texts)), best].astype(np.float32)
        labels = [self.labels[i] if c >= self.reject_below else self.reject for i, c in zip(best, conf)]
        return InferenceResponse(model_name=self.name, id=payload.id, outputs=[
            StringCodec.encode_output("label", labels), NumpyCodec.encode_output("confidence", conf)])
