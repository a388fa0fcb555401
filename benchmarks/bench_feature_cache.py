#!/usr/bin/env python
"""Cached features vs re-encoding every epoch: how much faster do probes/adapters train?
Command-line front of :func:`course_lib.experiments.fewshot.measure_feature_cache_speedup` (notebook 04).

Few-shot adaptation methods that keep the image encoder frozen (linear probe, LP++, CLIP-Adapter,
Tip-Adapter-F, CoOp's image side) see the *same* image features in every epoch. Encoding the
images once and training on the cached features gives identical gradients; re-encoding each
mini-batch every epoch pays the encoder's forward pass ``epochs`` times.

    python benchmarks/bench_feature_cache.py                       # profile sizes (quick on CPU)
    python benchmarks/bench_feature_cache.py --backbone ViT-B-16 --pretrained none --n 128
"""
from __future__ import annotations

import argparse
import json


def main(argv=None) -> dict:
    from course_lib import runtime
    from course_lib.experiments.fewshot import format_speedup, measure_feature_cache_speedup

    P = runtime.get_profile()
    S = P.section("few_shot")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default=P.backbone, help=f"backbone name (profile default: {P.backbone})")
    ap.add_argument("--pretrained", default="default", help="'default', an open_clip tag, or 'none' for random weights")
    ap.add_argument("--n", type=int, default=S.bench_n, help=f"training images (default {S.bench_n})")
    ap.add_argument("--epochs", type=int, default=S.bench_epochs, help=f"epochs (default {S.bench_epochs})")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", default=None, help="also write the result to this JSON file")
    args = ap.parse_args(argv)
    pretrained = None if args.pretrained.lower() == "none" else args.pretrained
    res = measure_feature_cache_speedup(args.backbone, pretrained, n=args.n, epochs=args.epochs,
                                        batch_size=args.batch_size, P=P)
    print(format_speedup(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
