"""Models in and out: safetensors + JSON checkpoints (``checkpoints``, never unpickles) and the loader that turns a
checkpoint or an exact-oracle spec into a model to sample from (``loading``)."""
