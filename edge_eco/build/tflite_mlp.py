"""Write a full-int8 multi-layer perceptron as a ``.tflite`` file without TensorFlow.

Build-time only: uses the flatbuffer object API that ``ai-edge-litert`` ships
(``ai_edge_litert.schema_py_generated``). The graph is a chain of FULLY_CONNECTED operators with
int8 input, per-tensor symmetric int8 weights, int32 biases and int8 activations (hidden layers
fuse RELU); the output is int8 logits with their scale and zero point. :func:`reference_logits`
is the numpy twin used by tests and by the build to check the interpreter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_FC_VERSION = 4  # int8 FULLY_CONNECTED with int32 bias; accepted by every LiteRT since 2.3


@dataclass(frozen=True)
class QuantMLP:
    """A quantized MLP: per layer int8 weight [out, in], int32 bias [out], and the activation
    quantization (scale, zero point) of the input and of every layer's output."""

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    weight_scales: tuple[float, ...]
    act: tuple[tuple[float, int], ...]  # len(weights) + 1 entries: input, then each layer's output


def _act_quant(lo: float, hi: float) -> tuple[float, int]:
    """Asymmetric int8 quantization of the range [lo, hi] (always containing 0)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = max((hi - lo) / 255.0, 1e-8)
    zero = int(np.clip(np.round(-128 - lo / scale), -128, 127))
    return float(np.float32(scale)), zero


def quantize_mlp(weights: list[np.ndarray], biases: list[np.ndarray], calib: np.ndarray) -> QuantMLP:
    """Quantize a float MLP (weights [in, out] as scikit-learn stores them; RELU between layers).

    Args:
        weights, biases: float layers.
        calib: float32 [n, in] representative inputs; activation ranges come from them.
    """
    acts = [_act_quant(calib.min(), calib.max())]
    x = calib.astype(np.float64)
    qw, qb, ws = [], [], []
    for i, (w, b) in enumerate(zip(weights, biases)):
        x = x @ w + b
        if i < len(weights) - 1:
            x = np.maximum(x, 0.0)
        acts.append(_act_quant(np.percentile(x, 0.01), np.percentile(x, 99.99)))
        w_scale = float(np.float32(max(np.abs(w).max(), 1e-8) / 127.0))
        qw.append(np.clip(np.rint(w.T / w_scale), -127, 127).astype(np.int8))  # [out, in]
        bias_scale = np.float64(np.float32(acts[i][0])) * np.float64(np.float32(w_scale))
        qb.append(np.rint(b / bias_scale).astype(np.int32))
        ws.append(w_scale)
    return QuantMLP(tuple(qw), tuple(qb), tuple(ws), tuple(acts))


def quantize_input(m: QuantMLP, x: np.ndarray) -> np.ndarray:
    """float input -> int8 with the model's input quantization."""
    scale, zero = m.act[0]
    return np.clip(np.rint(x / scale) + zero, -128, 127).astype(np.int8)


def reference_logits(m: QuantMLP, x: np.ndarray) -> np.ndarray:
    """Dequantized float logits [n, C] computed with integer arithmetic like the int8 kernels
    (up to one quantum of rounding: LiteRT uses a fixed-point multiplier)."""
    q = quantize_input(m, x).astype(np.int64)
    for i, (w, b) in enumerate(zip(m.weights, m.biases)):
        (s_in, z_in), (s_out, z_out) = m.act[i], m.act[i + 1]
        acc = (q - z_in) @ w.T.astype(np.int64) + b
        real = acc * (np.float64(np.float32(s_in)) * m.weight_scales[i] / s_out)
        q = np.clip(np.round(real) + z_out, -128, 127).astype(np.int64)
        if i < len(m.weights) - 1:
            q = np.maximum(q, z_out)  # RELU in the quantized domain
    s, z = m.act[-1]
    return ((q - z) * s).astype(np.float32)


def write_tflite(m: QuantMLP, description: str = "edge_eco int8 mlp") -> bytes:
    """Serialize ``m`` as a .tflite flatbuffer (deterministic bytes). Input tensor ``x`` int8 [1, in],
    output ``logits`` int8 [1, C]."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    buffers = [s.BufferT()]  # buffer 0 is the empty sentinel
    tensors = []

    def tensor(name: str, shape: list[int], ttype: int, scale: float, zero: int, data: np.ndarray | None) -> int:
        t = s.TensorT()
        t.name, t.shape, t.type = name.encode(), list(shape), ttype
        q = s.QuantizationParametersT()
        q.scale, q.zeroPoint = [float(scale)], [int(zero)]
        t.quantization = q
        if data is not None:
            b = s.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            buffers.append(b)
            t.buffer = len(buffers) - 1
        tensors.append(t)
        return len(tensors) - 1

    n_in = m.weights[0].shape[1]
    cur = tensor("x", [1, n_in], s.TensorType.INT8, *m.act[0], None)
    first = cur
    ops = []
    for i, (w, b) in enumerate(zip(m.weights, m.biases)):
        last = i == len(m.weights) - 1
        wt = tensor(f"fc{i}/weight", list(w.shape), s.TensorType.INT8, m.weight_scales[i], 0, w)
        bt = tensor(f"fc{i}/bias", [w.shape[0]], s.TensorType.INT32, m.act[i][0] * m.weight_scales[i], 0, b)
        out = tensor("logits" if last else f"fc{i}/out", [1, w.shape[0]], s.TensorType.INT8, *m.act[i + 1], None)
        op = s.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = 0, [cur, wt, bt], [out]
        op.builtinOptionsType = s.BuiltinOptions.FullyConnectedOptions
        opts = s.FullyConnectedOptionsT()
        opts.fusedActivationFunction = s.ActivationFunctionType.NONE if last else s.ActivationFunctionType.RELU
        op.builtinOptions = opts
        ops.append(op)
        cur = out
    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.FULLY_CONNECTED
    code.version = _FC_VERSION
    sg = s.SubGraphT()
    sg.tensors, sg.inputs, sg.outputs, sg.operators, sg.name = tensors, [first], [cur], ops, b"main"
    model = s.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, [code], [sg]
    model.buffers, model.description = buffers, description.encode()
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
