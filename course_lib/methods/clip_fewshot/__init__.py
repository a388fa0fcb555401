"""Few-shot adaptation of CLIP (notebooks 03, 04): ``coop`` (CoOp, CoCoOp), ``linear_probe`` (LinearProbe,
TextInitProbe = LP++-style, ClapProbe), ``clip_adapter`` (CLIPAdapter), ``tip_adapter`` (TipAdapter), ``transclip``."""
