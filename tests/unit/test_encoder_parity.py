"""The exported encoder against the PyTorch model it came from (sentence-transformers).

fp32: max |delta| <= 1e-4 on every embedding; int8 (per-channel dynamic quantisation):
cosine >= 0.97 to the PyTorch embedding; int8-static (static quantisation): cosine >= 0.98 to
fp32, and, like fp32, a text's embedding and a head's probabilities do not depend on the batch
it is padded in (<= 1e-5). Real sentences of mixed length from the demo data.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from headroom import config
from headroom.export.encoder import model_source_dir, variant_path
from headroom.text_tokenizer import TextTokenizer


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    lines = (config.DEMO_DATA_DIR / "smart_home.jsonl").read_text(encoding="utf-8").splitlines()
    short = [json.loads(line)["text"] for line in lines[:40]]
    long = [" ".join(json.loads(line)["text"] for line in lines[i : i + 12]) for i in range(40, 40 + 12 * 20, 12)]
    texts = short + long
    assert len(texts) >= 50
    lengths = [len(t.split()) for t in texts]
    assert min(lengths) <= 4 and max(lengths) >= 60  # mixed lengths
    return texts


@pytest.fixture(scope="module")
def reference(sentences) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_source_dir()), device="cpu")
    return model.encode(sentences, batch_size=16, convert_to_numpy=True)


@pytest.fixture(scope="module")
def tokenizer():
    return TextTokenizer(model_source_dir() / config.TOKENIZER_FILE, max_length=config.MAX_SEQ_LEN_TOKENS)


def onnx_embeddings(variant: str, texts: list[str], tokenizer, batch_size: int) -> np.ndarray:
    session = ort.InferenceSession(
        str(variant_path(variant, config.Settings.from_env().build_dir)), providers=["CPUExecutionProvider"]
    )
    chunks = []
    for start in range(0, len(texts), batch_size):
        ids, mask = tokenizer(texts[start : start + batch_size])
        chunks.append(session.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})[0])
    return np.concatenate(chunks)


@pytest.mark.parametrize("batch_size", [1, 16])
def test_fp32_matches_pytorch(sentences, reference, tokenizer, batch_size):
    embeddings = onnx_embeddings("fp32", sentences, tokenizer, batch_size)
    assert embeddings.shape == (len(sentences), config.EMBEDDING_DIM)
    assert np.abs(embeddings - reference).max() <= 1e-4


@pytest.mark.parametrize("batch_size", [1, 16])
def test_int8_stays_close_to_pytorch(sentences, reference, tokenizer, batch_size):
    embeddings = onnx_embeddings("int8", sentences, tokenizer, batch_size)
    cosine = (embeddings * reference).sum(axis=1) / (
        np.linalg.norm(embeddings, axis=1) * np.linalg.norm(reference, axis=1)
    )
    assert cosine.min() >= 0.97


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_int8_static_stays_close_to_fp32(sentences, reference, tokenizer):
    # bench.encoder_variants measured min 0.985 over 2,044 real texts, 0.997 on average.
    embeddings = onnx_embeddings("int8-static", sentences, tokenizer, batch_size=1)
    fp32 = onnx_embeddings("fp32", sentences, tokenizer, batch_size=1)
    assert cosines(embeddings, fp32).min() >= 0.98
    assert cosines(embeddings, reference).min() >= 0.98
    assert cosines(embeddings, fp32).mean() >= 0.99


@pytest.mark.parametrize("variant", ["fp32", "int8-static"])
def test_answers_do_not_depend_on_the_batch(variant, sentences, tokenizer):
    """Each text alone (no padding) against inside batches of 16 mixed short and long texts (padded)."""
    from headroom.export.datasets import load_labelled_file
    from headroom.export.heads import train_head

    alone = onnx_embeddings(variant, sentences, tokenizer, batch_size=1)
    order = np.random.default_rng(0).permutation(len(sentences))
    batched = np.empty_like(alone)
    batched[order] = onnx_embeddings(variant, [sentences[i] for i in order], tokenizer, batch_size=16)
    assert np.abs(alone - batched).max() <= 1e-5

    data = load_labelled_file(config.DEMO_DATA_DIR / "smart_home.jsonl")
    head = train_head(data, lambda texts: onnx_embeddings(variant, list(texts), tokenizer, batch_size=32))
    p_alone, p_batched = head.predict_proba(alone), head.predict_proba(batched)
    assert np.abs(p_alone - p_batched).max() <= 1e-5
    assert (p_alone.argmax(axis=1) == p_batched.argmax(axis=1)).all()


def test_calibration_text_is_disjoint_from_every_demo_tenant(settings):
    from headroom.client.traffic import demo_texts
    from headroom.export.demo import write_demo_data
    from headroom.export.encoder import calibration_texts

    write_demo_data(settings.build_dir / "demo_data")
    calibration = calibration_texts()
    assert len(calibration) >= 500
    assert not set(calibration) & set(demo_texts(build_dir=settings.build_dir))


@pytest.mark.parametrize("variant", config.ENCODER_VARIANTS)
def test_graph_has_clear_names_and_dynamic_axes(variant):
    session = ort.InferenceSession(
        str(variant_path(variant, config.Settings.from_env().build_dir)), providers=["CPUExecutionProvider"]
    )
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    assert set(inputs) == {"input_ids", "attention_mask"}
    assert all(i.type == "tensor(int64)" for i in inputs.values())
    assert set(outputs) == {"token_embeddings", "sentence_embedding"}
    assert all(isinstance(d, str) for d in inputs["input_ids"].shape)  # batch and sequence are dynamic
    assert outputs["sentence_embedding"].shape[1] == config.EMBEDDING_DIM


def test_sentence_embeddings_are_unit_length(sentences, tokenizer):
    embeddings = onnx_embeddings("fp32", sentences[:8], tokenizer, batch_size=8)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
