"""What a head file is: the format the executor serves and onboarding checks, in one place.

A head is an ONNX model FP32 [batch, D] -> probabilities [batch, C], with C labels. A head that
is one linear layer and a softmax over the classes (what headroom's training exports: ``Gemm`` +
``Softmax``, or ``MatMul`` + ``Add`` + ``Softmax``) is recognised by ``linear_parameters`` and
stacked by the executor; any other graph runs as its own ONNX Runtime session.

A head with slots also has a **token head** in the same version folder: ``slots.onnx``, FP32
[batch, tokens, D] (the encoder's ``token_embeddings``) -> tag probabilities [batch, tokens, K],
with the K BIO tag names in ``tags.txt`` (``headroom.bio_tags``: "O", "B-<slot>", "I-<slot>"...).
One ``MatMul`` + ``Add`` + ``Softmax`` over the last axis is recognised by ``linear_parameters``
too and stacked the same way; ``parse_token_head`` is its admission rule.

``parse_head`` is the executor's admission rule; ``headroom.repository.validation`` calls the same
function before it writes a head, so a head onboarding accepts is a head the executor loads.
Pure numpy and onnx: the executor (inside Triton) and the host import this module alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

#: A head's one input and its output (the names headroom's training exports; any are accepted).
HEAD_INPUT = "sentence_embedding"
HEAD_OUTPUT = "probabilities"
#: The files of one head version folder, ``<repository>/head_<name>/<version>/``.
MODEL_FILE = "model.onnx"
LABELS_FILE = "labels.txt"
HEAD_INFO_FILE = "head.json"
#: A head with slots: its token head and the tag names of its output, in output order.
SLOTS_MODEL_FILE = "slots.onnx"
TAGS_FILE = "tags.txt"
TOKEN_HEAD_INPUT = "token_embeddings"
TOKEN_HEAD_OUTPUT = "tag_probabilities"
#: Written last into a version folder of a head store without atomic rename (S3): a version is
#: complete, and may be loaded or read, only once this marker exists (``headroom.repository.s3_store``).
VERSION_COMPLETE_FILE = "COMPLETE"
#: ONNX metadata keys headroom's exported heads carry.
FINGERPRINT_KEY = "encoder_fingerprint"
LABELS_KEY = "labels"
METRICS_KEY = "metrics"


class HeadFileError(ValueError):
    """A head file that cannot serve: not ONNX, wrong input, labels that do not match."""


@dataclass(frozen=True)
class SlotFiles:
    """A version's token head: ``slots.onnx`` and the tag names of ``tags.txt``."""

    model: bytes
    tags: list[str]


# --- recognising linear heads ----------------------------------------------------------------
def _attribute(node: onnx.NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _softmax_over_classes(node: onnx.NodeProto, rank: int) -> bool:
    # Opset >= 13 Softmax normalises one axis: the last, -1 or rank - 1 ([batch, classes]: 1;
    # a token head's [batch, tokens, tags]: 2).
    return node.op_type == "Softmax" and _attribute(node, "axis", -1) in (-1, rank - 1)


def linear_parameters(model: onnx.ModelProto, rank: int = 2) -> tuple[np.ndarray, np.ndarray] | None:
    """(weights [C, D], bias [C]) of a one-layer softmax head, or None for any other graph.

    ``rank``: of the input, 2 for a sentence head, 3 for a token head (whose one linear layer
    is a ``MatMul`` + ``Add``: ``Gemm`` takes only matrices)."""
    graph = model.graph
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    nodes = list(graph.node)
    if len(graph.input) != 1 or len(graph.output) != 1 or not nodes or not _softmax_over_classes(nodes[-1], rank):
        return None
    x = graph.input[0].name
    if nodes[-1].output[0] != graph.output[0].name:
        return None
    if len(nodes) == 2 and nodes[0].op_type == "Gemm":
        gemm = nodes[0]
        if len(gemm.input) != 3 or gemm.input[0] != x or gemm.output[0] != nodes[1].input[0]:
            return None
        if _attribute(gemm, "alpha", 1.0) != 1.0 or _attribute(gemm, "beta", 1.0) != 1.0:
            return None
        if _attribute(gemm, "transA", 0) != 0:
            return None
        weights, bias = initializers.get(gemm.input[1]), initializers.get(gemm.input[2])
        if weights is None or bias is None or weights.ndim != 2:
            return None
        if not _attribute(gemm, "transB", 0):
            weights = weights.T  # stored [D, C]
    elif len(nodes) == 3 and (nodes[0].op_type, nodes[1].op_type) == ("MatMul", "Add"):
        matmul, add = nodes[0], nodes[1]
        if matmul.input[0] != x or matmul.output[0] not in add.input or add.output[0] != nodes[2].input[0]:
            return None
        other = [name for name in add.input if name != matmul.output[0]]
        weights = initializers.get(matmul.input[1])
        bias = initializers.get(other[0]) if len(other) == 1 else None
        if weights is None or bias is None or weights.ndim != 2:
            return None
        weights = weights.T  # MatMul holds [D, C]
    else:
        return None
    bias = np.asarray(bias).reshape(-1)
    if weights.dtype != np.float32 or bias.dtype != np.float32 or bias.shape[0] != weights.shape[0]:
        return None
    return np.ascontiguousarray(weights), np.ascontiguousarray(bias)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax computed as ONNX Runtime's Softmax does (max-shifted, float32)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def check_head_input(model: onnx.ModelProto, dim: int, rank: int = 2) -> None:
    """Refuse a head whose one input is not FP32 [batch, ``dim``] (``rank`` 3, a token head:
    [batch, tokens, ``dim``])."""
    what = "a head" if rank == 2 else "a token head"
    if len(model.graph.input) != 1:
        raise HeadFileError(f"{what} has exactly one input, this one has {len(model.graph.input)}")
    tensor_type = model.graph.input[0].type.tensor_type
    if tensor_type.elem_type != onnx.TensorProto.FLOAT:
        name = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
        raise HeadFileError(f"{what}'s input must be FLOAT (FP32), this one is {name}")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    if len(dims) != rank or dims[-1] != dim:
        shown = ["?" if d is None else d for d in dims]
        wanted = f"[batch, {dim}]" if rank == 2 else f"[batch, tokens, {dim}]"
        raise HeadFileError(f"{what}'s input must be {wanted}, this one is {shown}")


def parse_head(
    model_bytes: bytes, labels: Sequence[str], dim: int
) -> tuple[tuple[np.ndarray, np.ndarray] | None, onnx.ModelProto]:
    """Validate a head file; returns its linear parameters (None when it needs a session) and
    the parsed model (onboarding reads its metadata from it)."""
    try:
        model = onnx.load_from_string(model_bytes)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise HeadFileError(f"the head file is not an ONNX model ({type(exc).__name__})") from exc
    check_head_input(model, dim)
    parameters = linear_parameters(model)
    if parameters is not None and parameters[0].shape != (len(labels), dim):
        raise HeadFileError(
            f"the head has {parameters[0].shape[0]} classes of width {parameters[0].shape[1]} but "
            f"labels.txt names {len(labels)} labels"
        )
    return parameters, model


def windowed(token_embeddings: np.ndarray, window: int) -> np.ndarray:
    """[S, T, D] -> [S, T, (2 * window + 1) * D]: each token beside its ``window`` neighbours
    on either side (previous first; zeros past the ends), what a windowed token head reads."""
    if window == 0:
        return token_embeddings
    rows, length, dim = token_embeddings.shape
    padded = np.zeros((rows, length + 2 * window, dim), dtype=token_embeddings.dtype)
    padded[:, window : window + length] = token_embeddings
    return np.concatenate([padded[:, offset : offset + length] for offset in range(2 * window + 1)], axis=2)


def _window_parameters(model: onnx.ModelProto, model_bytes: bytes, dim: int):
    """(weights [K, (2w+1) D], bias [K], w) of a windowed linear token head, or None.

    Recognised by what it computes, not by its graph: its one weight matrix [(2w+1) D, K] and
    bias [K] must reproduce, through ``windowed``, its own output in ONNX Runtime on a probe."""
    import onnxruntime as ort

    arrays = [numpy_helper.to_array(tensor) for tensor in model.graph.initializer]
    matrices = [a for a in arrays if a.ndim == 2 and a.dtype == np.float32 and a.shape[0] % dim == 0]
    vectors = [a for a in arrays if a.ndim == 1 and a.dtype == np.float32]
    if len(matrices) != 1 or len(vectors) != 1 or (matrices[0].shape[0] // dim) % 2 == 0:
        return None
    weights, bias = matrices[0].T, vectors[0]
    if bias.shape[0] != weights.shape[0]:
        return None
    window = (weights.shape[1] // dim - 1) // 2
    probe = np.random.default_rng(0).normal(size=(2, 2 * window + 3, dim)).astype(np.float32)
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        expected = session.run(None, {session.get_inputs()[0].name: probe})[0]
    except Exception:  # not runnable here: parse as a session, which reports the problem
        return None
    computed = softmax(windowed(probe, window) @ weights.T + bias)
    if expected.shape != computed.shape or not np.allclose(expected, computed, atol=1e-5):
        return None
    return np.ascontiguousarray(weights), np.ascontiguousarray(bias), window


def parse_token_head(
    model_bytes: bytes, tags: Sequence[str], dim: int
) -> tuple[tuple[np.ndarray, np.ndarray, int] | None, onnx.ModelProto]:
    """Validate a token head (``slots.onnx`` with the names of ``tags.txt``): its stacked
    parameters (weights [K, (2w+1) D], bias [K], window w; None when it needs a session) and
    the parsed model. w = 0: one ``MatMul`` + ``Add`` + ``Softmax`` on each token; w > 0: the
    same over each token and its w neighbours either side (``windowed``)."""
    from headroom.bio_tags import check_tag_names

    try:
        check_tag_names(list(tags))
    except ValueError as exc:
        raise HeadFileError(f"{TAGS_FILE}: {exc}") from exc
    try:
        model = onnx.load_from_string(model_bytes)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise HeadFileError(f"the token head file is not an ONNX model ({type(exc).__name__})") from exc
    check_head_input(model, dim, rank=3)
    linear = linear_parameters(model, rank=3)
    parameters = (*linear, 0) if linear is not None else _window_parameters(model, model_bytes, dim)
    if parameters is not None and parameters[0].shape[0] != len(tags):
        raise HeadFileError(f"the token head has {parameters[0].shape[0]} tags but {TAGS_FILE} names {len(tags)} tags")
    return parameters, model
