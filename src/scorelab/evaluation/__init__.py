"""Measure a model or its samples: probability-flow likelihoods and ELBOs (``likelihood``), sample metrics
(``metrics``: W2, sliced W2, MMD to an exact mixture, mode statistics, FID, precision/recall)."""
