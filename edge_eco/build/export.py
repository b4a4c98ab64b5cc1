"""Write an int8 sparse-linear classifier as ONNX (build-time only; needs the ``onnx`` package).

Graph: inputs ``indices`` int32 [nnz] and ``values`` float32 [nnz] (the featurizer's output) ->
Gather rows of the int8 weight [dim, C] -> DequantizeLinear per class -> x values -> sum -> + bias
-> ``logits`` float32 [C]. The weights go to an external ``NAME.onnx.data`` that ONNX Runtime
memory-maps.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import require
from .train import quantize_columns

OPSET = 17


def sparse_linear_model(weight: np.ndarray, bias: np.ndarray, name: str):
    """An int8 ONNX model computing logits = sum_i values[i] * dequant(W[indices[i]]) + bias."""
    onnx = require("onnx")
    from onnx import TensorProto, helper, numpy_helper

    q, scale = quantize_columns(weight)
    n_classes = weight.shape[1]
    inits = [numpy_helper.from_array(q, "weight_q"), numpy_helper.from_array(scale, "weight_scale"),
             numpy_helper.from_array(np.zeros(n_classes, np.int8), "weight_zero"),
             numpy_helper.from_array(bias.astype(np.float32), "bias"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(np.array([0], np.int64), "axis0")]
    nodes = [
        helper.make_node("Gather", ["weight_q", "indices"], ["rows_q"], axis=0),
        helper.make_node("DequantizeLinear", ["rows_q", "weight_scale", "weight_zero"], ["rows"], axis=1),
        helper.make_node("Unsqueeze", ["values", "axis1"], ["values_col"]),
        helper.make_node("Mul", ["rows", "values_col"], ["weighted"]),
        helper.make_node("ReduceSum", ["weighted", "axis0"], ["summed"], keepdims=0),
        helper.make_node("Add", ["summed", "bias"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("indices", TensorProto.INT32, ["nnz"]),
         helper.make_tensor_value_info("values", TensorProto.FLOAT, ["nnz"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [n_classes])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="edge_eco.tools")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_onnx(weight: np.ndarray, bias: np.ndarray, out: Path, name: str) -> list[str]:
    """Write ``name.onnx`` with its int8 weights in ``name.onnx.data``; returns both file names."""
    onnx = require("onnx")
    model = sparse_linear_model(weight, bias, name)
    data_name = f"{name}.onnx.data"
    (out / data_name).unlink(missing_ok=True)  # onnx appends external data to an existing file
    (out / f"{name}.onnx").unlink(missing_ok=True)  # a new file, never one a running process reads rewritten
    onnx.save_model(model, str(out / f"{name}.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=data_name, size_threshold=1024)
    _umask_mode(out / data_name)
    return [f"{name}.onnx", data_name]


def _umask_mode(path: Path) -> None:
    """Give ``path`` the mode an ordinary new file gets (0666 less the umask): onnx writes external
    data 0600, which another user serving the bundle cannot read."""
    umask = os.umask(0)
    os.umask(umask)
    if path.is_file():
        path.chmod(0o666 & ~umask)


def onnx_logits(path: Path, feats: list) -> np.ndarray:
    """Logits [n, C] of a written (quantized) model via ONNX Runtime, exactly as the runtime sees them.

    Args:
        path: the ``.onnx`` file; feats: featurizer outputs (indices, values), one per row.
    """
    from ..backends import open_model

    sess = open_model("ort", path)
    return np.stack([sess.run({"indices": i, "values": v}) for i, v in feats])
