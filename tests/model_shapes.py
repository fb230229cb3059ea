"""Small real ONNX models of several tensor signatures, built with ``onnx.helper`` (no torch),
seeded, written where the caller says (a tmp path): the shapes a team's model has, for tests of
signatures, warm-up, padded batching, bad input and per-task comparisons.

Each ``write_*`` function writes one model and returns its path; ``seed`` picks the weights, so
a teacher and a student of one signature are the same function with two seeds. ``run_onnx``
answers with ONNX Runtime directly, the reference a gateway's answers are compared against.

Shapes (-1: a dynamic axis):
- write_text_classifier: input_ids, attention_mask INT64 [-1, -1] -> logits FP32 [-1, classes]
  (token_output=True adds token_scores FP32 [-1, -1], an output carrying the sequence axis;
  class_axis="labels" makes logits [-1, -1], its class axis dynamic though fixed in size)
- write_text_embedder: input_ids, attention_mask INT64 [-1, -1] -> embedding FP32 [-1, width]
- write_fp16_model: x FP16 [-1, features] -> y FP16 [-1, classes]
- write_bf16_model: x BF16 [-1, features] -> y BF16 [-1, classes], echo BF16 [-1, features]
- write_string_model: text BYTES [-1] -> echo BYTES [-1], is_hello BOOL [-1], score FP32 [-1]
- write_multi_output_model: features FP32 [-1, n] -> label INT64 [-1], logits and
  probabilities FP32 [-1, classes]
- write_every_datatype_model: in_<datatype> [-1, 3] of every V2 datatype -> out_<datatype>
  (Identity), and score FP32 [-1, 1]; bf16=True: BF16 in place of BYTES
- write_transformer_classifier: input_ids, attention_mask INT64 [-1, -1] -> logits FP32
  [-1, classes] (a masked multi-head attention encoder, for speed and padding)
- write_regression_model: features FP32 [-1, n] -> value FP32 [-1, targets]
- write_multilabel_model: features FP32 [-1, n] -> logits FP32 [-1, labels] (sigmoid each)
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

BATCH, SEQ = "batch", "seq"  # dynamic axes: -1 in the gateway's signature


def write_text_classifier(
    path: Path,
    *,
    classes: int = 4,
    vocab: int = 64,
    width: int = 16,
    seed: int = 0,
    token_output: bool = False,
    class_axis: str | None = None,
) -> Path:
    """A BERT-shaped classifier: ``input_ids`` and ``attention_mask`` INT64 [batch, seq] ->
    ``logits`` FP32 [batch, classes]. Token embeddings are mean-pooled over the positions whose
    mask is 1, then a linear layer: padding a row with any ids and mask 0 leaves its logits
    unchanged (up to float summation order). ``token_output`` adds ``token_scores`` FP32
    [batch, seq] (a score per token, 0 where masked), an output that carries the padded axis.
    ``class_axis`` declares the class axis of ``logits`` dynamic under that name (as exports
    with symbolic dimensions do), though it is always ``classes`` long."""
    rng = np.random.default_rng(seed)
    embedding = rng.standard_normal((vocab, width)).astype(np.float32)
    weights = (rng.standard_normal((width, classes)) / np.sqrt(width)).astype(np.float32)
    bias = rng.standard_normal(classes).astype(np.float32) * 0.1
    nodes = [*_masked_mean_pool("pooled"), helper.make_node("MatMul", ["pooled", "w"], ["wx"]),
             helper.make_node("Add", ["wx", "b"], ["logits"])]  # fmt: skip
    outputs = [_value("logits", TensorProto.FLOAT, [BATCH, class_axis or classes])]
    initializers = [_array(embedding, "token_table"), _array(weights, "w"), _array(bias, "b")]
    if class_axis is not None:  # a reshape to [batch, -1] computed at run time: ONNX Runtime
        nodes[-1].output[0] = "logits_fixed"  # cannot infer the class axis, so keeps the name
        nodes += [
            helper.make_node("Shape", ["input_ids"], ["ids_shape"], start=0, end=1),
            helper.make_node("Concat", ["ids_shape", "minus_one"], ["flat_shape"], axis=0),
            helper.make_node("Reshape", ["logits_fixed", "flat_shape"], ["logits"]),
        ]
        initializers.append(_array(np.array([-1], dtype=np.int64), "minus_one"))
    if token_output:
        per_token = (rng.standard_normal((width, 1)) / np.sqrt(width)).astype(np.float32)
        nodes += [
            helper.make_node("MatMul", ["tokens", "per_token"], ["token_raw"]),  # [b, s, 1]
            helper.make_node("Squeeze", ["token_raw", "last_axis"], ["token_squeezed"]),
            helper.make_node("Mul", ["token_squeezed", "mask_float"], ["token_scores"]),
        ]
        outputs.append(_value("token_scores", TensorProto.FLOAT, [BATCH, SEQ]))
        initializers += [_array(per_token, "per_token"),
                         _array(np.array([2], dtype=np.int64), "last_axis")]  # fmt: skip
    return _save(path, "text_classifier", nodes, _text_inputs(), outputs, initializers)


def write_text_embedder(path: Path, *, width: int = 16, vocab: int = 64, seed: int = 0) -> Path:
    """``input_ids`` and ``attention_mask`` INT64 [batch, seq] -> ``embedding`` FP32
    [batch, width]: the masked mean of token embeddings (an embedding model's output)."""
    rng = np.random.default_rng(seed)
    embedding = rng.standard_normal((vocab, width)).astype(np.float32)
    nodes = _masked_mean_pool("embedding")
    outputs = [_value("embedding", TensorProto.FLOAT, [BATCH, width])]
    return _save(path, "text_embedder", nodes, _text_inputs(), outputs,
                 [_array(embedding, "token_table")])  # fmt: skip


def write_fp16_model(path: Path, *, features: int = 8, classes: int = 3, seed: int = 0) -> Path:
    """``x`` FP16 [batch, features] -> ``y`` FP16 [batch, classes]: one FP16 matrix product."""
    rng = np.random.default_rng(seed)
    weights = (rng.standard_normal((features, classes)) / np.sqrt(features)).astype(np.float16)
    return _save(
        path, "fp16", [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [_value("x", TensorProto.FLOAT16, [BATCH, features])],
        [_value("y", TensorProto.FLOAT16, [BATCH, classes])],
        [_array(weights, "w")],
    )  # fmt: skip


def write_bf16_model(path: Path, *, features: int = 8, classes: int = 3, seed: int = 0) -> Path:
    """``x`` BF16 [batch, features] -> ``y`` BF16 [batch, classes] (class logits: x cast to FP32,
    a matrix product and a bias, cast back to BF16, as a mixed-precision export computes) and
    ``echo`` BF16 [batch, features] (x itself, every bit of the input back)."""
    rng = np.random.default_rng(seed)
    weights = (rng.standard_normal((features, classes)) / np.sqrt(features)).astype(np.float32)
    bias = (rng.standard_normal(classes) * 0.1).astype(np.float32)
    node = helper.make_node
    return _save(
        path, "bf16",
        [node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT), node("MatMul", ["x32", "w"], ["wx"]),
         node("Add", ["wx", "b"], ["y32"]), node("Cast", ["y32"], ["y"], to=TensorProto.BFLOAT16),
         node("Identity", ["x"], ["echo"])],
        [_value("x", TensorProto.BFLOAT16, [BATCH, features])],
        [_value("y", TensorProto.BFLOAT16, [BATCH, classes]),
         _value("echo", TensorProto.BFLOAT16, [BATCH, features])],
        [_array(weights, "w"), _array(bias, "b")],
    )  # fmt: skip


def write_string_model(path: Path, *, word: str = "hello") -> Path:
    """``text`` BYTES [batch] (an ONNX string tensor) -> ``echo`` BYTES [batch] (the same
    strings), ``is_hello`` BOOL [batch] (equal to ``word``) and ``score`` FP32 [batch] (1.0
    where equal, else 0.0: a numeric output to compare)."""
    nodes = [
        helper.make_node("Identity", ["text"], ["echo"]),
        helper.make_node("Equal", ["text", "word"], ["is_hello"]),
        helper.make_node("Cast", ["is_hello"], ["score"], to=TensorProto.FLOAT),
    ]
    outputs = [_value("echo", TensorProto.STRING, [BATCH]),
               _value("is_hello", TensorProto.BOOL, [BATCH]),
               _value("score", TensorProto.FLOAT, [BATCH])]  # fmt: skip
    word_tensor = numpy_helper.from_array(np.array([word], dtype=object), "word")
    # Equal takes strings from opset 19 on.
    return _save(path, "strings", nodes, [_value("text", TensorProto.STRING, [BATCH])], outputs,
                 [word_tensor], opset=19)  # fmt: skip


def write_multi_output_model(
    path: Path, *, features: int = 6, classes: int = 3, seed: int = 0
) -> Path:
    """``features`` FP32 [batch, features] -> ``logits`` and ``probabilities`` FP32
    [batch, classes] and ``label`` INT64 [batch] (the argmax): three outputs of two datatypes,
    listed with ``label`` first, so nothing may assume ``outputs[0]`` holds the scores."""
    nodes = [*_linear("features", "logits"),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
             helper.make_node("ArgMax", ["logits"], ["label"], axis=-1, keepdims=0)]  # fmt: skip
    outputs = [_value("label", TensorProto.INT64, [BATCH]),
               _value("logits", TensorProto.FLOAT, [BATCH, classes]),
               _value("probabilities", TensorProto.FLOAT, [BATCH, classes])]  # fmt: skip
    return _save(path, "multi_output", nodes, [_features(features)], outputs,
                 _linear_weights(features, classes, seed))  # fmt: skip


def write_regression_model(
    path: Path, *, features: int = 6, targets: int = 2, seed: int = 0
) -> Path:
    """``features`` FP32 [batch, features] -> ``value`` FP32 [batch, targets]: a linear map."""
    return _save(path, "regression", _linear("features", "value"), [_features(features)],
                 [_value("value", TensorProto.FLOAT, [BATCH, targets])],
                 _linear_weights(features, targets, seed))  # fmt: skip


def write_multilabel_model(
    path: Path, *, features: int = 6, labels: int = 5, seed: int = 0
) -> Path:
    """``features`` FP32 [batch, features] -> ``logits`` FP32 [batch, labels]: one independent
    logit per label (a multi-label model; its probabilities are the sigmoid of each)."""
    return _save(path, "multilabel", _linear("features", "logits"), [_features(features)],
                 [_value("logits", TensorProto.FLOAT, [BATCH, labels])],
                 _linear_weights(features, labels, seed))  # fmt: skip


DATATYPES = {
    "BOOL": TensorProto.BOOL, "UINT8": TensorProto.UINT8, "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32, "UINT64": TensorProto.UINT64, "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16, "INT32": TensorProto.INT32, "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16, "FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}  # fmt: skip
"""Every V2 datatype but BF16, and its ONNX element type: the ones ``session.run`` takes."""
BF16_DATATYPES = {**{d: t for d, t in DATATYPES.items() if d != "BYTES"},
                  "BF16": TensorProto.BFLOAT16}  # fmt: skip
"""Every numeric V2 datatype, BF16 included: ONNX Runtime's Python API cannot feed a string
tensor beside a BF16 one (strings only through ``session.run``, BF16 only as OrtValues)."""


def write_every_datatype_model(path: Path, *, bf16: bool = False) -> Path:
    """One input ``in_<datatype>`` [batch, 3] of each of ``DATATYPES`` (``BF16_DATATYPES`` with
    ``bf16``) and an output ``out_<datatype>`` that is its Identity, plus ``score`` FP32
    [batch, 1] (the FP32 input's first column, a numeric output to compare): every datatype in
    and out of one model."""
    datatypes = BF16_DATATYPES if bf16 else DATATYPES
    nodes = [helper.make_node("Identity", [f"in_{d}"], [f"out_{d}"]) for d in datatypes]
    nodes.append(helper.make_node("Slice", ["in_FP32", "zero_one", "one_one", "one_one"],
                                  ["score"]))  # fmt: skip
    inputs = [_value(f"in_{d}", t, [BATCH, 3]) for d, t in datatypes.items()]
    outputs = [_value("score", TensorProto.FLOAT, [BATCH, 1]),
               *(_value(f"out_{d}", t, [BATCH, 3]) for d, t in datatypes.items())]  # fmt: skip
    constants = [_array(np.array([0], dtype=np.int64), "zero_one"),
                 _array(np.array([1], dtype=np.int64), "one_one")]  # fmt: skip
    return _save(path, "every_datatype", nodes, inputs, outputs, constants)


def write_transformer_classifier(
    path: Path,
    *,
    layers: int = 4,
    width: int = 128,
    heads: int = 4,
    vocab: int = 1000,
    classes: int = 4,
    max_length: int = 128,
    seed: int = 0,
) -> Path:
    """A BERT-shaped transformer encoder: ``input_ids`` and ``attention_mask`` INT64
    [batch, seq] -> ``logits`` FP32 [batch, classes]. Token and position embeddings, ``layers``
    post-norm blocks of masked multi-head self-attention (masked keys get -10000 before the
    softmax: exactly 0 weight in FP32) and a 4x GELU feed-forward, then the masked mean and a
    linear head, so padding with mask 0 leaves a row's logits unchanged up to float summation
    order. Random seeded weights (for speed and padding tests, not accuracy); about
    ``layers * 12 * width**2`` multiply-adds per token."""
    rng = np.random.default_rng(seed)
    head = width // heads

    def weight(rows: int, cols: int, name: str) -> str:
        tensors.append(_array((rng.standard_normal((rows, cols)) / np.sqrt(rows))
                              .astype(np.float32), name))  # fmt: skip
        return name

    def constant(value: np.ndarray, name: str) -> str:
        tensors.append(_array(value, name))
        return name

    tensors: list[onnx.TensorProto] = []
    node = helper.make_node
    nodes = [
        node("Gather", [weight(vocab, width, "token_table"), "input_ids"], ["tok"]),
        node("Shape", ["input_ids"], ["ids_shape"]),
        node(
            "Slice",
            ["ids_shape", constant(np.array([1]), "one_i"), constant(np.array([2]), "two_i")],
            ["seq_len"],
        ),
        node(
            "Slice",
            [weight(max_length, width, "positions"), constant(np.array([0]), "zero_i"), "seq_len"],
            ["pos"],
        ),
        node("Add", ["tok", "pos"], ["h0"]),
        node("Cast", ["attention_mask"], ["mask_float"], to=TensorProto.FLOAT),
        # [b, s] -> [b, 1, 1, s]: (1 - mask) * -10000 on every masked key
        node(
            "Sub",
            [constant(np.array(1.0, dtype=np.float32), "one_f"), "mask_float"],
            ["unmasked_not"],
        ),
        node(
            "Mul",
            ["unmasked_not", constant(np.array(-10000.0, dtype=np.float32), "big")],
            ["bias2"],
        ),
        node("Unsqueeze", ["bias2", constant(np.array([1, 2]), "axes12")], ["key_bias"]),
    ]
    split_heads = constant(np.array([0, 0, heads, head]), "split_heads")
    merge_heads = constant(np.array([0, 0, width]), "merge_heads")
    scale = constant(np.array(1.0 / np.sqrt(head), dtype=np.float32), "scale")
    for layer in range(layers):
        h, p = f"h{layer}", f"l{layer}_"
        for name in ("q", "k", "v"):
            nodes += [
                node("MatMul", [h, weight(width, width, p + "w" + name)], [p + name]),
                node("Reshape", [p + name, split_heads], [p + name + "4"]),
                node(
                    "Transpose",
                    [p + name + "4"],
                    [p + name + "t"],
                    perm=[0, 2, 3, 1] if name == "k" else [0, 2, 1, 3],
                ),
            ]
        nodes += [
            node("MatMul", [p + "qt", p + "kt"], [p + "scores"]),  # [b, h, s, s]
            node("Mul", [p + "scores", scale], [p + "scaled"]),
            node("Add", [p + "scaled", "key_bias"], [p + "biased"]),
            node("Softmax", [p + "biased"], [p + "weights"], axis=-1),
            node("MatMul", [p + "weights", p + "vt"], [p + "context4"]),
            node("Transpose", [p + "context4"], [p + "context_t"], perm=[0, 2, 1, 3]),
            node("Reshape", [p + "context_t", merge_heads], [p + "context"]),
            node("MatMul", [p + "context", weight(width, width, p + "wo")], [p + "attended"]),
            node("Add", [h, p + "attended"], [p + "res1"]),
            node(
                "LayerNormalization",
                [
                    p + "res1",
                    constant(np.ones(width, np.float32), p + "g1"),
                    constant(np.zeros(width, np.float32), p + "b1"),
                ],
                [p + "n1"],
                axis=-1,
            ),
            node("MatMul", [p + "n1", weight(width, 4 * width, p + "w_up")], [p + "up"]),
            node("Gelu", [p + "up"], [p + "act"], domain="com.microsoft"),
            node("MatMul", [p + "act", weight(4 * width, width, p + "w_down")], [p + "down"]),
            node("Add", [p + "n1", p + "down"], [p + "res2"]),
            node(
                "LayerNormalization",
                [
                    p + "res2",
                    constant(np.ones(width, np.float32), p + "g2"),
                    constant(np.zeros(width, np.float32), p + "b2"),
                ],
                [f"h{layer + 1}"],
                axis=-1,
            ),
        ]
    nodes += [
        node("Unsqueeze", ["mask_float", constant(np.array([2]), "axis2")], ["mask3"]),
        node("Mul", [f"h{layers}", "mask3"], ["masked"]),
        node(
            "ReduceSum", ["masked", constant(np.array([1]), "seq_axis_t")], ["summed"], keepdims=0
        ),
        node("ReduceSum", ["mask_float", "seq_axis_t"], ["count"], keepdims=1),
        node("Max", ["count", constant(np.array([1.0], dtype=np.float32), "one_f1")], ["count1"]),
        node("Div", ["summed", "count1"], ["pooled"]),
        node("MatMul", ["pooled", weight(width, classes, "w_out")], ["logits"]),
    ]
    outputs = [_value("logits", TensorProto.FLOAT, [BATCH, classes])]
    graph = helper.make_graph(nodes, "transformer_classifier", _text_inputs(), outputs, tensors)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.save(model, path)
    return path


def text_rows(
    rng: np.random.Generator, lengths: Sequence[int], *, vocab: int = 64, pad_to: int | None = None
) -> dict[str, np.ndarray]:
    """``input_ids`` and ``attention_mask`` for rows of the given lengths, padded (id 0, mask 0)
    to ``pad_to`` or the longest."""
    width = pad_to if pad_to is not None else max(lengths)
    ids = np.zeros((len(lengths), width), dtype=np.int64)
    mask = np.zeros((len(lengths), width), dtype=np.int64)
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(1, vocab, size=length)
        mask[row, :length] = 1
    return {"input_ids": ids, "attention_mask": mask}


def run_onnx(path: Path, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of the model for ``inputs``, by name, from ONNX Runtime directly (a model
    with BF16 tensors through OrtValues: ``session.run`` takes no bfloat16)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    tensors = [*session.get_inputs(), *session.get_outputs()]
    if all(node.type != "tensor(bfloat16)" for node in tensors):
        return dict(zip(names, session.run(names, dict(inputs)), strict=True))
    feeds = {name: ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
                 np.ascontiguousarray(array).view(np.uint16), TensorProto.BFLOAT16)
             if array.dtype == ml_dtypes.bfloat16 else ort.OrtValue.ortvalue_from_numpy(array)
             for name, array in inputs.items()}  # fmt: skip
    results = session.run_with_ort_values(names, feeds)
    return {name: _bf16_bits(value) if value.data_type() == "tensor(bfloat16)" else value.numpy()
            for name, value in zip(names, results, strict=True)}  # fmt: skip


def _bf16_bits(value: ort.OrtValue) -> np.ndarray:
    """A BF16 OrtValue's elements (it has no ``.numpy()``), read through its data pointer."""
    size = value.tensor_size_in_bytes()
    raw = (ctypes.c_uint8 * size).from_address(value.data_ptr())
    return np.frombuffer(bytes(raw), dtype=ml_dtypes.bfloat16).reshape(value.shape())


def _masked_mean_pool(output: str) -> list[onnx.NodeProto]:
    """Nodes from ``input_ids``/``attention_mask`` to ``output`` [batch, width]: the mean of the
    embeddings of unmasked tokens (a row with no unmasked token gives zeros, not NaN). Leaves
    ``tokens`` [b, s, width] and ``mask_float`` [b, s] for other heads."""
    return [
        helper.make_node("Gather", ["token_table", "input_ids"], ["tokens"]),  # [b, s, w]
        helper.make_node("Cast", ["attention_mask"], ["mask_float"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_float", "last_axis_unsqueeze"], ["mask3"]),
        helper.make_node("Mul", ["tokens", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "seq_axis"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask_float", "seq_axis"], ["count"], keepdims=1),
        helper.make_node("Max", ["count", "one"], ["count_at_least_one"]),
        helper.make_node("Div", ["summed", "count_at_least_one"], [output]),
    ]


def _text_inputs() -> list[onnx.ValueInfoProto]:
    return [_value("input_ids", TensorProto.INT64, [BATCH, SEQ]),
            _value("attention_mask", TensorProto.INT64, [BATCH, SEQ])]  # fmt: skip


_POOL_CONSTANTS: dict[str, np.ndarray] = {
    "last_axis_unsqueeze": np.array([2], dtype=np.int64),
    "seq_axis": np.array([1], dtype=np.int64),
    "one": np.array([1.0], dtype=np.float32),
}


def _linear(source: str, output: str) -> list[onnx.NodeProto]:
    return [helper.make_node("MatMul", [source, "w"], [f"{output}_wx"]),
            helper.make_node("Add", [f"{output}_wx", "b"], [output])]  # fmt: skip


def _linear_weights(features: int, outputs: int, seed: int) -> list[onnx.TensorProto]:
    rng = np.random.default_rng(seed)
    weights = (rng.standard_normal((features, outputs)) / np.sqrt(features)).astype(np.float32)
    return [_array(weights, "w"), _array(rng.standard_normal(outputs).astype(np.float32), "b")]


def _features(features: int) -> onnx.ValueInfoProto:
    return _value("features", TensorProto.FLOAT, [BATCH, features])


def _value(name: str, element_type: int, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, element_type, shape)


def _array(array: np.ndarray, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def _save(
    path: Path,
    name: str,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto],
    opset: int = 17,
) -> Path:
    used = {tensor for node in nodes for tensor in node.input}
    initializers = initializers + [
        _array(value, key) for key, value in _POOL_CONSTANTS.items() if key in used
    ]
    graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9 if opset >= 19 else 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path
