"""Train a score model: denoising score-matching losses (``losses``, ``hodsm``), the loop with EMA, clipping,
checkpoints, resume and DDP (``loop``), YAML experiments -> run folders (``experiment``)."""
