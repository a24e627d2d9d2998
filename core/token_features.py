"""What token heads (slots) are trained on: one text's token embeddings and token offsets.

Pure numpy, so the thin client (``HeadroomClient.embed_tokens``), head training
(``headroom.export.slot_heads``) and in-process embedding share the one type.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenFeatures:
    """One text's token embeddings FP32 [T, 384] and each token's character offsets INT [T, 2]
    into the text (code points, end exclusive; (0, 0) for [CLS] and [SEP]), as the served
    ``embed`` model answers them; T counts [CLS] and [SEP]."""

    embeddings: np.ndarray
    offsets: np.ndarray
