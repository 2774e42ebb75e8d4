"""Measure a model or its samples: probability-flow likelihoods and ELBOs (``likelihood``), sample metrics
(``metrics``: W2, sliced W2, MMD to an exact mixture, mode statistics, FID, precision/recall) and the summaries
the CLI prints (``reports``: samples against an oracle or reference samples, likelihood with ELBOs)."""
