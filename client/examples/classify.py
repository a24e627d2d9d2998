"""Classify two texts with the `pipeline` model using plain tritonclient (no headroom package).

    python client/examples/classify.py [URL]    # URL: default localhost:8000 (HTTP)
"""

import sys

import numpy as np
import tritonclient.http as httpclient

url = sys.argv[1] if len(sys.argv) > 1 else "localhost:8000"
texts = ["turn on the kitchen lights", "what will the weather be like tomorrow"]
client = httpclient.InferenceServerClient(url.removeprefix("http://"))
inputs = []
for name, rows in (("TEXT", texts), ("HEAD", ["smart_home"] * len(texts))):  # one head per row
    tensor = httpclient.InferInput(name, [len(rows), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(rows, dtype=object).reshape(-1, 1))
    inputs.append(tensor)
result = client.infer("pipeline", inputs)
for text, label, score in zip(texts, result.as_numpy("LABEL")[:, 0], result.as_numpy("SCORE")[:, 0], strict=True):
    print(f"{label.decode()}\t{score:.3f}\t{text}")  # SCORE: the winning label's probability
