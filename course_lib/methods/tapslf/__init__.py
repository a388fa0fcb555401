"""TAP-SLF (notebook 10): task-aware soft prompts + selective top-layer LoRA + four task heads on one frozen
encoder: ``tapslf.build_tapslf``, ``tapslf.train``, ``tapslf.evaluate``, ``tapslf.VARIANTS``; backbones in ``encoders``."""
