"""Refine a pretrained model's sampler: shortcut fine-tuning with policy gradient (``sft_pg``) and a learned restart
policy trained with the f-policy gradient (``f_restart``)."""
