"""Unit tests of head training, ONNX export, training files and the on-disk head store."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import onnxruntime as ort
import pytest
from headroom import config
from headroom.export import tenants
from headroom.export.datasets import DatasetError, LabelledTexts, load_labelled_file
from headroom.export.heads import head_to_onnx, train_head
from headroom.head_format import HEAD_INPUT, HEAD_OUTPUT
from headroom.repository import head_store, locks


def fake_embedder(dim: int = config.EMBEDDING_DIM):
    """Deterministic, class-separable vectors: the word 'alpha'/'beta'/'gamma' picks an axis."""

    def embed(texts):
        rng = np.random.default_rng(0)
        out = rng.normal(scale=0.05, size=(len(texts), dim)).astype(np.float32)
        for i, text in enumerate(texts):
            for axis, word in enumerate(("alpha", "beta", "gamma")):
                if word in text:
                    out[i, axis] += 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    return embed


def dataset(classes=("alpha", "beta", "gamma"), per_class=10) -> LabelledTexts:
    texts, labels = [], []
    for label in classes:
        for i in range(per_class):
            texts.append(f"{label} example {i}")
            labels.append(label)
    return LabelledTexts(texts, labels)


def run_onnx(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([HEAD_OUTPUT], {HEAD_INPUT: x})[0]


@pytest.mark.parametrize("classes", [("alpha", "beta", "gamma"), ("alpha", "beta")])
def test_trained_head_exports_to_an_onnx_graph_with_identical_probabilities(classes):
    embed = fake_embedder()
    head = train_head(dataset(classes), embed)
    assert head.labels == sorted(classes)
    assert head.metrics["holdout_accuracy"] == 1.0
    assert head.metrics["holdout_examples"] >= len(classes)
    x = embed([f"{c} probe" for c in classes])
    onnx_probs = run_onnx(head_to_onnx(head), x)
    np.testing.assert_allclose(onnx_probs, head.predict_proba(x), atol=1e-6)
    np.testing.assert_allclose(onnx_probs.sum(axis=1), 1.0, atol=1e-6)
    assert [head.labels[i] for i in onnx_probs.argmax(axis=1)] == list(classes)


def test_binary_head_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    embed = fake_embedder()
    data = dataset(("alpha", "beta"))
    head = train_head(data, embed)
    reference = LogisticRegression(C=config.DEFAULT_HEAD_REGULARISATION_C, max_iter=2000, random_state=0).fit(
        embed(data.texts), data.labels
    )
    x = embed(["alpha x", "beta y", "neither"])
    np.testing.assert_allclose(run_onnx(head_to_onnx(head), x), reference.predict_proba(x), atol=1e-5)


def test_onnx_head_carries_its_metadata():
    head = train_head(dataset(), fake_embedder())
    model = head_to_onnx(head, {"encoder_fingerprint": "sha256:abc"})
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta == {"encoder_fingerprint": "sha256:abc"}
    assert [i.name for i in model.graph.input] == [HEAD_INPUT]
    assert [o.name for o in model.graph.output] == [HEAD_OUTPUT]


# --- training files --------------------------------------------------------------------------
def test_loads_jsonl_and_csv(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(
        '{"text": "hi", "label": "x"}\n{"text": "yo", "label": "x"}\n'
        '{"text": "a", "label": "y"}\n{"text": "b", "label": "y"}\n'
    )
    csv = tmp_path / "a.csv"
    csv.write_text('text,label\nhi,x\n"yo, there",x\na,y\nb,y\n')
    assert load_labelled_file(jsonl).classes == ["x", "y"]
    assert load_labelled_file(csv).texts[1] == "yo, there"


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("one.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n', "at least two classes"),
        (
            "scarce.jsonl",
            '{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n{"text": "c", "label": "y"}\n',
            "at least two examples",
        ),
        ("empty.jsonl", '{"text": "  ", "label": "x"}\n', "'text' is missing or empty"),
        ("nolabel.jsonl", '{"text": "a"}\n', "'label' is missing or empty"),
        ("bad.jsonl", "not json\n", "not valid JSON"),
        ("cols.csv", "sentence,intent\na,x\n", "must name 'text' and 'label'"),
        ("data.txt", "a\n", "unknown format"),
        ("blank.jsonl", "\n\n", "line 1 is blank"),
        ("nothing.jsonl", "", "no labelled examples"),
        ("middle.jsonl", '{"text": "a", "label": "x"}\n\n{"text": "b", "label": "y"}\n', "line 2 is blank"),
        ("key.jsonl", '{"text": "a", "label": "x", "lang": "en"}\n', r"unknown field\(s\) \['lang'\]"),
        ("column.csv", "text,label,id\na,x,1\n", r"unknown column\(s\) \['id'\]"),
        ("twice.csv", "text,label,text\na,x,b\n", "more than once"),
        ("blank.csv", "text,label\na,x\n\nb,y\n", "line 3 is blank"),
        ("newline.jsonl", '{"text": "a", "label": "x\\ny"}\n{"text": "b", "label": "x\\ny"}\n', "line break"),
    ],
)
def test_refuses_unusable_training_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DatasetError, match=message):
        load_labelled_file(path)


# --- head store ------------------------------------------------------------------------------
def test_write_head_is_atomic_and_versioned(tmp_path):
    repository, state = tmp_path / "repo", tmp_path / "state"
    repository.mkdir()
    head = train_head(dataset(), fake_embedder())
    first = tenants.write_head("acme", head, "sha256:enc", repository=repository, state_dir=state)
    assert first.version == 1
    folder = repository / "head_acme"
    assert sorted(os.listdir(folder)) == ["1", "config.pbtxt"]
    assert sorted(os.listdir(folder / "1")) == ["head.json", "labels.txt", "model.onnx"]
    assert (folder / "1" / "labels.txt").read_text().split() == head.labels
    info = json.loads((folder / "1" / "head.json").read_text())
    assert info["encoder_fingerprint"] == "sha256:enc" and info["labels"] == head.labels
    assert 'name: "head_acme"' in (folder / "config.pbtxt").read_text()

    second = tenants.write_head("acme", head, "sha256:enc", repository=repository, state_dir=state)
    assert second.version == 2
    assert head_store.versions_of(folder) == [1, 2]
    assert os.listdir(state / "staging") == []  # nothing left behind

    third = tenants.write_head("acme", head, "sha256:enc", repository=repository, state_dir=state)
    assert third.version == 3
    # Keeping version 2 archives the older one only: version 3 may be another onboarding's.
    moved = head_store.archive_old_versions("acme", keep=2, repository=repository, state_dir=state)
    assert len(moved) == 1 and head_store.versions_of(folder) == [2, 3]
    head_store.archive_old_versions("acme", keep=3, repository=repository, state_dir=state)
    assert head_store.versions_of(folder) == [3]
    archived = head_store.archive_head("acme", repository=repository, state_dir=state)
    assert not folder.exists() and (archived / "3" / "model.onnx").exists()
    assert head_store.archive_head("acme", repository=repository, state_dir=state) is None


def test_failed_write_leaves_no_partial_head(tmp_path, monkeypatch):
    repository, state = tmp_path / "repo", tmp_path / "state"
    repository.mkdir()
    head = train_head(dataset(), fake_embedder())

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(head_store, "_fsync_dir", crash)
    with pytest.raises(OSError, match="disk full"):
        tenants.write_head("acme", head, "sha256:enc", repository=repository, state_dir=state)
    assert os.listdir(repository) == []
    assert os.listdir(state / "staging") == []


def test_head_lock_excludes_a_second_holder_until_released(tmp_path):
    with locks.head_lock("acme", tmp_path) as path:
        assert path == tmp_path / "locks" / "acme.lock"
        with pytest.raises(locks.HeadBusy, match="head 'acme' is being onboarded or offboarded elsewhere"):
            with locks.head_lock("acme", tmp_path, timeout_s=0.2):
                pass
        with locks.head_lock("other", tmp_path, timeout_s=0.2):  # other names are independent
            pass
    with locks.head_lock("acme", tmp_path, timeout_s=0.2):  # released
        pass


def test_training_files_may_end_with_a_newline_and_csv_with_a_bom(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(
        '{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n{"text": "c", "label": "y"}\n'
        '{"text": "d", "label": "y"}'
    )
    assert load_labelled_file(jsonl).texts == ["a", "b", "c", "d"]
    csv = tmp_path / "a.csv"
    csv.write_text('\ufefftext,label\na,x\nb,x\n"multi\nline",y\nd,y\n', encoding="utf-8")
    assert load_labelled_file(csv).texts[2] == "multi\nline"


def test_clean_staging_removes_only_abandoned_leftovers(tmp_path):
    old = tmp_path / "staging" / "head_x.123"
    (old / "1").mkdir(parents=True)
    (tmp_path / "staging" / "head_y.456").mkdir()  # may belong to an onboarding still running
    stale = time.time() - head_store.STAGING_ABANDONED_AFTER_S - 10
    os.utime(old, (stale, stale))
    assert head_store.clean_staging(tmp_path) == 1
    assert os.listdir(tmp_path / "staging") == ["head_y.456"]


def test_export_keeps_the_encoder_that_onboarded_heads_were_trained_for(tmp_path, capsys, settings):
    """Switching the served encoder would strand every onboarded head (refused: "onboard it again")."""
    from headroom.client.cli import main
    from headroom.export.encoder import install_encoder, read_encoder_info

    repository, state = tmp_path / "model_repository", tmp_path / ".headroom"
    installed = install_encoder("fp32", repository, settings.build_dir)
    head = train_head(dataset(), fake_embedder())
    tenants.write_head("acme", head, installed["fingerprint"], repository=repository, state_dir=state)
    tenants.write_head("smart_home", head, installed["fingerprint"], repository=repository, state_dir=state)

    assert main(["--repository", str(repository), "export", "--variant", "int8"]) == 0
    assert read_encoder_info(repository)["fingerprint"] == installed["fingerprint"]  # kept
    warning = capsys.readouterr().err
    assert "keeping the installed fp32 variant, not int8: 1 onboarded head(s) were trained for it (acme)" in warning
    assert "--switch-encoder" in warning and "smart_home" not in warning  # demo heads are retrained

    assert main(["--repository", str(repository), "export", "--variant", "int8", "--switch-encoder"]) == 0
    assert read_encoder_info(repository)["variant"] == "int8"
    assert head_store.heads_trained_for(installed["fingerprint"], repository) == ["acme", "smart_home"]
    # Nothing onboarded against the installed encoder: the variant switches without a word.
    assert main(["--repository", str(repository), "export", "--variant", "fp32"]) == 0
    assert read_encoder_info(repository)["variant"] == "fp32"
