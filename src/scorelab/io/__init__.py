"""Models in and out: safetensors + JSON checkpoints (``checkpoints``, never unpickles) and the loader that turns a
checkpoint or an exact-oracle spec into a ``LoadedModel`` (model, event shape, optional oracle, source) and reads
sample files (``loading``), and the ``provenance.json`` every command writes next to its output (``provenance``)."""
