"""Interactive segmentation foundation models (notebook 07): SAM-family models through transformers
(``checkpoint.load``, ``InteractiveSAM.decode``), simulated prompts (``prompts``), SAM's interactive training
recipe (``recipe.pretrain``), Dice vs clicks (``evaluate.dice_vs_clicks``) and MedSAM-style fine-tuning
(``finetune.prepare``, ``finetune.finetune``)."""
