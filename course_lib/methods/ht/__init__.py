"""HT (Qu et al., arXiv:2506.08849): Mona and HT adapters, channel vs frequency-dependent filters, multi-level heads,
the training recipe and stage-1 image-text tuning; entry points: HTAdapter, Mona, build_model, fit_task, stage1_image_text."""
