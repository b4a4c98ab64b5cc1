"""Write an int8 MLP as ONNX (build-time only, also used by benches and tests; needs the ``onnx`` package).

Each layer: DynamicQuantizeLinear(x) -> MatMulInteger(x_u8, W_i8) -> Cast -> * (x_scale * w_scale)
-> + bias (-> Relu between layers): the graph ``quantize_dynamic`` writes, so ONNX Runtime keeps
the weights int8 (and prepacks them unless ``session.disable_prepacking`` is set).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def int8_mlp(weights: list[np.ndarray], biases: list[np.ndarray], name: str = "mlp") -> onnx.ModelProto:
    """An ONNX graph with input ``x`` float32 [1, in] and output ``logits`` float32 [1, C]."""
    inits, nodes, cur = [], [], "x"
    for i, (w, b) in enumerate(zip(weights, biases)):
        scale = np.float32(max(float(np.abs(w).max()), 1e-8) / 127.0)
        q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        inits += [numpy_helper.from_array(q, f"w{i}"), numpy_helper.from_array(np.array(scale, np.float32), f"ws{i}"),
                  numpy_helper.from_array(b.astype(np.float32), f"b{i}")]
        last = i == len(weights) - 1
        nodes += [
            helper.make_node("DynamicQuantizeLinear", [cur], [f"xq{i}", f"xs{i}", f"xz{i}"]),
            helper.make_node("MatMulInteger", [f"xq{i}", f"w{i}", f"xz{i}"], [f"acc{i}"]),
            helper.make_node("Cast", [f"acc{i}"], [f"accf{i}"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"xs{i}", f"ws{i}"], [f"s{i}"]),
            helper.make_node("Mul", [f"accf{i}", f"s{i}"], [f"y{i}"]),
            helper.make_node("Add", [f"y{i}", f"b{i}"], ["logits" if last else f"z{i}"]),
        ]
        if not last:
            nodes.append(helper.make_node("Relu", [f"z{i}"], [f"h{i}"]))
            cur = f"h{i}"
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weights[0].shape[0]])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, weights[-1].shape[1]])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edge_eco.tools")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, path: Path, external: bool) -> None:
    """Write ``model`` embedded, or with every initializer in ``path.name + '.data'`` (mappable)."""
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=0)
    else:
        onnx.save_model(model, str(path))


def random_mlp(n_in: int, hidden: int, n_out: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Random float weights of a 2-layer MLP (for size sweeps and equivalence tests)."""
    rng = np.random.default_rng(seed)
    ws = [rng.normal(0, 1 / np.sqrt(n_in), (n_in, hidden)).astype(np.float32),
          rng.normal(0, 1 / np.sqrt(hidden), (hidden, n_out)).astype(np.float32)]
    return ws, [rng.normal(0, 0.1, hidden).astype(np.float32), rng.normal(0, 0.1, n_out).astype(np.float32)]
