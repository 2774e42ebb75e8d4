"""Refine a pretrained model's few-step sampler: shortcut fine-tuning with policy gradient (``sft_pg``)."""
