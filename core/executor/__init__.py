"""The shared ``executor`` model's logic, without Triton: ``model_repository/executor/1/model.py``
is the adapter that hands it Triton's requests.

- ``tensors``: the executor's inputs and outputs, parsed, encoded and read back (the pipeline
  reads them with the same module);
- ``head_runner``: a batch's rows through their heads, and why a row fails (``headroom.row_errors``);
- ``served_versions``: which version of a head serves now (the newest READY one);
- ``resident_heads``: head weights in memory, stacked linear heads and ONNX Runtime sessions,
  under an LRU byte budget;
- ``head_files``: the one place that reads a head's files from the model repository.
"""
