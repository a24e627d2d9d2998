"""Benchmark baseline, **not a serving mode**: issue 2's design, one Triton model per head.

Before the shared ``executor`` (issue 4), every head was its own ``backend: "onnxruntime"`` model
``head_<name>``, served by the project's Python-based ONNX Runtime backend: one Python-backend
stub process per head (~31 MiB each, ~1 s to load), and the pipeline made one BLS call per
distinct head of a batch. ``bench.dense_heads`` measures headroom against it at the largest head
count that fits this machine.

What is kept here, verbatim from commit c4971b3:

- ``pipeline/``: that design's pipeline model (``1/model.py``, ``1/head_dispatch.py``,
  ``config.pbtxt``), which resolves each head's READY version and calls ``head_<name>`` itself;
- ``HEAD_CONFIG_TEMPLATE``: that design's per-head ``config.pbtxt``.

``lay_out_repository`` builds a complete model repository for it in a folder of your choice:
the encoder and embed models copied from ``model_repository/`` (no executor), this
pipeline in place of the current one. Heads keep the current on-disk layout (``<version>/``
``model.onnx``, ``labels.txt``, ``head.json``); only their ``config.pbtxt`` differs
(``head_config``). Nothing here is imported by the server, the client or the CLI.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from headroom import config
from headroom.head_format import HEAD_INPUT, HEAD_OUTPUT
from headroom.naming import head_model_name

from bench.common import system_repository

PIPELINE_SOURCE = Path(__file__).resolve().parent / "pipeline"
#: The models this design needs besides the heads, in load order (no ``executor``).
SYSTEM_MODELS = (config.ENCODER_MODEL, config.EMBED_MODEL, config.PIPELINE_MODEL)

#: Issue 2's per-head model (``repository/head_store.py`` at commit c4971b3).
HEAD_CONFIG_TEMPLATE = """\
# Head of tenant '{name}', written by headroom onboarding. Labels, encoder fingerprint and
# metrics of each version live in <version>/head.json and <version>/labels.txt.
name: "{model}"
backend: "onnxruntime"
max_batch_size: 256
input [
  {{
    name: "{input}"
    data_type: TYPE_FP32
    dims: [ {dim} ]
  }}
]
output [
  {{
    name: "{output}"
    data_type: TYPE_FP32
    dims: [ -1 ]
  }}
]
instance_group [
  {{
    count: 1
    kind: KIND_CPU
  }}
]
version_policy: {{ latest: {{ num_versions: 1 }} }}
parameters {{
  key: "intra_op_thread_count"
  value: {{ string_value: "1" }}
}}
"""


def head_config(name: str) -> str:
    """``config.pbtxt`` of head ``name`` as its own ONNX Runtime model (issue 2)."""
    return HEAD_CONFIG_TEMPLATE.format(
        name=name, model=head_model_name(name), input=HEAD_INPUT, output=HEAD_OUTPUT, dim=config.EMBEDDING_DIM
    )


def lay_out_repository(destination: Path, variant: str = config.DEFAULT_ENCODER_VARIANT) -> Path:
    """A complete repository of this baseline, without heads, at ``destination`` (replaced).

    Add heads with ``bench.synthetic_heads.write_head_files(..., config_text=head_config)`` or
    ``bench.common.clone_head(..., config_text=head_config)``; start the server with
    ``TritonServer(..., models=[*SYSTEM_MODELS, *heads], system_models=SYSTEM_MODELS)``.
    """
    repository = system_repository(destination, variant, models=SYSTEM_MODELS)
    pipeline = repository / config.PIPELINE_MODEL
    shutil.rmtree(pipeline)
    shutil.copytree(PIPELINE_SOURCE, pipeline, ignore=shutil.ignore_patterns("__pycache__"))
    return repository
