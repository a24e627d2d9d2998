"""``config.pbtxt`` through Triton's own schema, and the parameters a model reads from its config.

Host code reads and writes ``config.pbtxt`` with ``google.protobuf.text_format`` and Triton's
``model_config_pb2`` (shipped by ``tritonclient``), never with string templates or regular
expressions. A Python model gets the same config as JSON in ``initialize``; ``parameter`` reads
one of its ``parameters`` entries, with the message both the models and the host use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2

CONFIG_FILE = "config.pbtxt"
_REQUIRED = object()


class MissingParameter(KeyError):
    """A model's config.pbtxt lacks a parameter the model needs."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def parameter(model_config: dict, key: str, default: str | object = _REQUIRED) -> str:
    """``parameters[key].string_value`` of a model config as Triton hands it to a Python model."""
    entry = model_config.get("parameters", {}).get(key)
    if entry and "string_value" in entry:
        return entry["string_value"]
    if default is _REQUIRED:
        raise MissingParameter(f"config.pbtxt of {model_config.get('name', 'the model')} lacks parameter '{key}'")
    return default  # type: ignore[return-value]


def own_file(args: dict, name: str) -> str:
    """Path of file ``name`` in a Python model's own version folder (``initialize``'s ``args``).

    A model reads only its own folder: Triton copies each model of an S3 repository into a
    temporary folder of its own, so a sibling model's folder is not there (FileNotFoundError
    naming the step that writes the file).
    """
    import os

    path = os.path.join(args["model_repository"], args["model_version"], name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: `headroom export` (make heads) installs it")
    return path


def parse_model_config(text: str) -> model_config_pb2.ModelConfig:
    """A ``config.pbtxt`` text as Triton's ``ModelConfig`` message."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def read_model_config(model_dir: str | Path) -> model_config_pb2.ModelConfig:
    """``<model_dir>/config.pbtxt`` as Triton's ``ModelConfig`` message."""
    return parse_model_config((Path(model_dir) / CONFIG_FILE).read_text(encoding="utf-8"))


def format_model_config(model_config: model_config_pb2.ModelConfig) -> str:
    """The text of a ``config.pbtxt`` for ``model_config``."""
    from google.protobuf import text_format

    return text_format.MessageToString(model_config)


def write_model_config(model_dir: str | Path, model_config: model_config_pb2.ModelConfig) -> Path:
    """Write ``<model_dir>/config.pbtxt``; its path."""
    path = Path(model_dir) / CONFIG_FILE
    path.write_text(format_model_config(model_config), encoding="utf-8")
    return path


def parameters_in(model_dir: str | Path) -> dict[str, str]:
    """The ``parameters`` of ``<model_dir>/config.pbtxt``, by key."""
    parsed = read_model_config(model_dir)
    return {key: value.string_value for key, value in parsed.parameters.items()}
