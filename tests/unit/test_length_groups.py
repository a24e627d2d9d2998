"""Unit tests of length-aware batching (``headroom.length_groups``, imported by ``embed``) and of the
in-process embedder that uses it: grouping keeps every row, in order, and changes no answer."""

from __future__ import annotations

import random

import numpy as np
import pytest
from headroom import config, length_groups
from headroom.client.traffic import real_text_mix
from headroom.export.embeddings import RepositoryEmbedder, grouping_limits


@pytest.fixture(scope="module")
def groups_module():
    return length_groups


def _check_plan(module, lengths, limits):
    groups = module.plan_groups(lengths, limits)
    rows = np.concatenate(groups) if groups else np.zeros(0, dtype=np.int64)
    assert sorted(rows.tolist()) == list(range(len(lengths))), "every row in exactly one group"
    lengths = np.asarray(lengths)
    previous_longest = 0
    for group in groups:
        group_lengths = lengths[group]
        assert (np.diff(group_lengths) >= 0).all(), "a group holds its rows shortest first"
        assert group_lengths.min() >= previous_longest, "groups come shortest first"
        previous_longest = group_lengths.max()
        assert len(group) <= limits.max_rows
        if len(group) > 1:
            assert len(group) * group_lengths.max() <= limits.max_batch_tokens
    return groups


def test_every_row_lands_in_one_group_within_the_bounds(groups_module):
    limits = groups_module.GroupingLimits(max_batch_tokens=256, max_rows=8, max_added_padding=16)
    rng = np.random.default_rng(0)
    for size in (0, 1, 2, 7, 64, 300):
        lengths = np.minimum(rng.geometric(0.08, size=size) + 2, 256)
        _check_plan(groups_module, lengths, limits)


def test_a_text_longer_than_the_budget_gets_a_group_of_its_own(groups_module):
    limits = groups_module.GroupingLimits(max_batch_tokens=100, max_rows=64, max_added_padding=16)
    groups = _check_plan(groups_module, [5, 256, 6, 256, 7], limits)
    assert [len(group) for group in groups] == [3, 1, 1]
    assert [sorted(group.tolist()) for group in groups] == [[0, 2, 4], [1], [3]]


def test_a_long_text_does_not_join_short_ones_when_its_padding_costs_more_than_a_call(groups_module):
    limits = groups_module.GroupingLimits(max_batch_tokens=4096, max_rows=128, max_added_padding=16)
    # 30 texts of 8 tokens and one of 200: padding the 30 to 200 would add 5,760 tokens.
    lengths = [8] * 30 + [200]
    groups = _check_plan(groups_module, lengths, limits)
    assert [len(group) for group in groups] == [30, 1]
    assert groups_module.padded_tokens(lengths, groups) == 30 * 8 + 200
    # Texts one token apart stay together: 2 rows x 1 token is far below the cost of a call.
    assert len(_check_plan(groups_module, [8, 9, 10, 11, 12], limits)) == 1


def test_grouping_a_real_mix_pads_far_less_than_arrival_order(groups_module, built_repository):
    """On texts of real length, batches of 32 in arrival order compute several times the real
    tokens; the served grouping stays within a few percent of them (the figures docs/benchmarks.md's
    "Length-aware batching" section reports come from bench/end_to_end.py's mix)."""
    embedder = RepositoryEmbedder(built_repository)
    tokens, groups = embedder.plan(real_text_mix(size=1024))
    real = int(tokens.lengths.sum())
    arrival = [np.arange(start, min(start + 32, len(tokens))) for start in range(0, len(tokens), 32)]
    assert groups_module.padded_tokens(tokens.lengths, arrival) > 3 * real
    assert groups_module.padded_tokens(tokens.lengths, groups) < 1.15 * real


def test_limits_come_from_the_served_config(groups_module):
    limits = grouping_limits(config.DEFAULT_MODEL_REPOSITORY)
    assert limits.max_batch_tokens >= 256 and 1 <= limits.max_rows <= 128
    with pytest.raises(ValueError, match="max_rows must be at least 1"):
        groups_module.GroupingLimits(max_rows=0)
    with pytest.raises(ValueError, match="max_added_padding must not be negative"):
        groups_module.GroupingLimits(max_added_padding=-1)


def test_grouped_embeddings_equal_each_text_alone_in_the_callers_order(built_repository):
    """fp32: a text's embedding does not depend on the texts that share its encoder call."""
    texts = real_text_mix(size=96, seed=3)
    random.Random(1).shuffle(texts)
    grouped = RepositoryEmbedder(built_repository)(texts)
    alone = RepositoryEmbedder(built_repository, alone=True)(texts)
    assert grouped.shape == (len(texts), config.EMBEDDING_DIM)
    if _served_variant(built_repository) in config.BATCH_INDEPENDENT_VARIANTS:
        assert np.abs(grouped - alone).max() <= 1e-5
    else:  # dynamic int8 scales activations per call (docs/benchmarks.md, "Choosing the encoder")
        assert (grouped * alone).sum(axis=1).min() >= 0.97


def _served_variant(repository) -> str:
    import json

    return json.loads((config.encoder_version_dir(repository) / config.ENCODER_INFO_FILE).read_text())["variant"]
