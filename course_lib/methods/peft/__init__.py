"""Parameter-efficient fine-tuning (notebook 05): LoRA via peft (``lora.apply_lora``, ``lora.merge_lora``),
ARENA's l1-sparse adaptive-rank LoRA (``arena.apply_arena``, ``arena.proximal_step``) and the FSEFT adaptation strategies (``strategies.prepare``, ``strategies.STRATEGIES``)."""
