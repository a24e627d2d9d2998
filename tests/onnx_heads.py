"""ONNX head files for onboarding tests: valid ones, and each way a head can be wrong.

Real ONNX graphs (built with ``onnx.helper``), run by the real ONNX Runtime in the tests: nothing
here is a mock.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from headroom import config
from headroom.export.heads import TrainedHead, head_to_onnx
from headroom.head_format import HEAD_INPUT, HEAD_OUTPUT
from onnx import TensorProto, helper, numpy_helper

DIM = config.EMBEDDING_DIM
OTHER_ENCODER = "sha256:" + "0" * 64


def trained_linear_head(classes: int = 3, seed: int = 0, dim: int = DIM, prefix: str = "c") -> TrainedHead:
    """Random weights in the shape training produces; labels ``<prefix>0``, ``<prefix>1``..."""
    rng = np.random.default_rng(seed)
    return TrainedHead(
        weights=rng.normal(scale=2.0, size=(classes, dim)).astype(np.float32),
        bias=rng.normal(size=classes).astype(np.float32),
        labels=[f"{prefix}{i}" for i in range(classes)],
    )


def linear_head(
    classes: int = 3, seed: int = 0, fingerprint: str | None = None, dim: int = DIM, prefix: str = "c"
) -> tuple[bytes, list[str]]:
    """What headroom exports (Gemm + Softmax), with ``fingerprint`` in its metadata when given."""
    head = trained_linear_head(classes, seed, dim, prefix)
    metadata = {"labels": json.dumps(head.labels)}
    if fingerprint is not None:
        metadata["encoder_fingerprint"] = fingerprint
    return head_to_onnx(head, metadata=metadata).SerializeToString(), head.labels


def graph_head(
    classes: int = 3,
    seed: int = 0,
    input_type: int = TensorProto.FLOAT,
    dim: int = DIM,
    softmax: bool = True,
    fingerprint: str | None = None,
    hidden: int = 16,
    prefix: str = "g",
) -> tuple[bytes, list[str]]:
    """A head that is not one linear layer (Cast, Gemm, Relu, Gemm[, Softmax]): its own session."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Cast", [HEAD_INPUT], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["logits" if softmax else HEAD_OUTPUT], transB=1),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], [HEAD_OUTPUT], axis=-1))
    graph = helper.make_graph(
        nodes,
        "graph_head",
        [helper.make_tensor_value_info(HEAD_INPUT, input_type, ["batch", dim])],
        [helper.make_tensor_value_info(HEAD_OUTPUT, TensorProto.FLOAT, ["batch", classes])],
        [
            numpy_helper.from_array(rng.normal(size=(hidden, dim)).astype(np.float32), "w1"),
            numpy_helper.from_array(rng.normal(size=hidden).astype(np.float32), "b1"),
            numpy_helper.from_array(rng.normal(size=(classes, hidden)).astype(np.float32), "w2"),
            numpy_helper.from_array(rng.normal(size=classes).astype(np.float32), "b2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if fingerprint is not None:
        model.metadata_props.add(key="encoder_fingerprint", value=fingerprint)
    return model.SerializeToString(), [f"{prefix}{i}" for i in range(classes)]


def write_head_files(folder: Path, name: str, model_bytes: bytes, labels: list[str]) -> tuple[Path, Path]:
    """``<name>.onnx`` and ``<name>.labels.txt`` in ``folder``, as an operator would hand them over."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx_file, labels_file = folder / f"{name}.onnx", folder / f"{name}.labels.txt"
    onnx_file.write_bytes(model_bytes)
    labels_file.write_text("\n".join(labels) + "\n", encoding="utf-8")
    return onnx_file, labels_file


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` (folders as ``<dir>``, files by SHA-256 of their content)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root)] = "<dir>"
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return found


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Paths added, removed or changed between two snapshots."""
    return sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))
