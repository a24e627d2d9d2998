"""Benchmark baseline, **not a serving mode**: issue 2's design, one Triton model per head.

Before the shared ``executor`` (issue 4), every head was its own ``backend: "onnxruntime"`` model
``head_<name>``, served by the project's Python-based ONNX Runtime backend: one Python-backend
stub process per head (~31 MiB each, ~1 s to load), and the pipeline made one BLS call per
distinct head of a batch. ``bench.dense_heads`` measures headroom against it at the largest head
count that fits this machine.

What is kept here, verbatim from commit c4971b3:

- ``pipeline/``: that design's pipeline model (``1/model.py``, ``1/head_dispatch.py``,
  ``config.pbtxt``), which resolves each head's READY version and calls ``head_<name>`` itself;
- ``head_model_config``: that design's per-head ``config.pbtxt``, as a ``ModelConfig`` message.

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
from headroom.model_config import format_model_config
from headroom.naming import head_model_name

from bench.common import system_repository

PIPELINE_SOURCE = Path(__file__).resolve().parent / "pipeline"
#: The models this design needs besides the heads, in load order (no ``executor``).
SYSTEM_MODELS = (config.ENCODER_MODEL, config.EMBED_MODEL, config.PIPELINE_MODEL)

#: At the top of each per-head ``config.pbtxt`` (issue 2's header).
HEAD_CONFIG_HEADER = """\
# Head of tenant '{name}', written by headroom onboarding. Labels, encoder fingerprint and
# metrics of each version live in <version>/head.json and <version>/labels.txt.
"""


def head_model_config(name: str):
    """Issue 2's per-head model (``repository/head_store.py`` at commit c4971b3) as Triton's
    ``ModelConfig``: head ``name`` as its own ONNX Runtime model, one instance on the CPU."""
    from tritonclient.grpc import model_config_pb2 as pb

    model = pb.ModelConfig(name=head_model_name(name), backend="onnxruntime", max_batch_size=256)
    model.input.add(name=HEAD_INPUT, data_type=pb.TYPE_FP32, dims=[config.EMBEDDING_DIM])
    model.output.add(name=HEAD_OUTPUT, data_type=pb.TYPE_FP32, dims=[-1])
    model.instance_group.add(count=1, kind=pb.ModelInstanceGroup.KIND_CPU)
    model.version_policy.latest.num_versions = 1
    model.parameters["intra_op_thread_count"].string_value = "1"
    return model


def head_config(name: str) -> str:
    """``config.pbtxt`` of head ``name`` as its own ONNX Runtime model (issue 2)."""
    return HEAD_CONFIG_HEADER.format(name=name) + format_model_config(head_model_config(name))


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
