"""The ONNX graph of an embedding-head model: export a BERT-family sentence encoder with torch (mean
pooling + L2 normalisation in the graph), quantize it to int8 with onnxruntime, and append the linear
head so that one file outputs ``logits``. Build-time only: torch, transformers and onnx are imported
inside the functions (the ``build`` extra), never by the runtime.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..tokens import INPUT_NAMES
from . import require

# A padded batch of 2 as the trace example (BERT uncased ids: [CLS] what is my balance [SEP] / [CLS]
# hello [SEP] + padding), so no shape of the trace is specialised to batch 1 or to one length.
_EXAMPLE_IDS = [[101, 2054, 2003, 2026, 5703, 102], [101, 7592, 102, 0, 0, 0]]


def export_encoder(model_dir: Path, out_path: Path, *, opset: int, seed: int) -> None:
    """Export the encoder in ``model_dir`` as an fp32 ONNX graph with output ``embedding`` [batch, dim].

    sentence-transformers' Transformer -> Pooling(mean over the attention mask) -> Normalize, as one
    module; the TorchScript exporter (``dynamo=False``) with dynamic batch and sequence axes.

    Raises:
        BuildError: torch or transformers is not installed.
    """
    torch = require("torch")
    bert_model = require("transformers").BertModel

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    bert = bert_model.from_pretrained(str(model_dir), attn_implementation="eager").eval()

    class Encoder(torch.nn.Module):
        """Mean-pooled, L2-normalised sentence embedding."""

        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    ids = torch.tensor(_EXAMPLE_IDS)
    mask = (ids != 0).long()
    dynamic = {name: {0: "batch", 1: "seq"} for name in INPUT_NAMES} | {"embedding": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(Encoder().eval(), (ids, mask, torch.zeros_like(ids)), str(out_path),
                          dynamo=False, opset_version=opset, input_names=list(INPUT_NAMES),
                          output_names=["embedding"], dynamic_axes=dynamic)


def quantize(fp32_path: Path, int8_path: Path, weights: str) -> None:
    """Dynamic int8 quantization of every op (``dynamic-uint8-per-channel``: per-channel QUInt8 weights,
    activations scaled per batch at run time)."""
    q = require("onnxruntime.quantization")
    assert weights == "dynamic-uint8-per-channel", weights  # the recipe parser admits no other
    q.quantize_dynamic(str(fp32_path), str(int8_path), per_channel=True, weight_type=q.QuantType.QUInt8)


def append_head(int8_path: Path, weight: np.ndarray, bias: np.ndarray, labels: list[str], source: str,
                out_path: Path) -> None:
    """Add ``logits = embedding @ weight + bias`` (fp32) to the graph; ``logits`` becomes the only output.

    Args:
        int8_path: the quantized encoder; weight: [dim, labels]; bias: [labels]; labels: in logit order
        (also stored as the ONNX metadata ``edge_eco.labels``); source: the metadata ``edge_eco.source``.
    """
    onnx = require("onnx")
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(int8_path))
    graph = model.graph
    graph.initializer.extend([numpy_helper.from_array(weight.astype(np.float32), "head.weight"),
                              numpy_helper.from_array(bias.astype(np.float32), "head.bias")])
    graph.node.extend([helper.make_node("MatMul", ["embedding", "head.weight"], ["head.matmul"], name="/head/MatMul"),
                       helper.make_node("Add", ["head.matmul", "head.bias"], ["logits"], name="/head/Add")])
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(labels)]))
    helper.set_model_props(model, {"edge_eco.labels": json.dumps(labels), "edge_eco.source": source})
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))
