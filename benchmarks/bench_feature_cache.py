#!/usr/bin/env python
"""Cached features vs re-encoding every epoch: how much faster do probes/adapters train?

Few-shot adaptation methods that keep the image encoder frozen (linear probe, LP++, CLIP-Adapter,
Tip-Adapter-F, CoOp's image side) see the *same* image features in every epoch. Encoding the
images once and training on the cached features gives identical gradients; re-encoding each
mini-batch every epoch (what a naive ``for images, labels in loader: model(images)`` loop does)
pays the encoder's forward pass ``epochs`` times.

    python benchmarks/bench_feature_cache.py                       # profile sizes (quick on CPU)
    python benchmarks/bench_feature_cache.py --backbone ViT-B-16 --pretrained none --n 128

Reports, for a CLIP-Adapter trained for ``epochs`` epochs on ``n`` SonoSynth images:
  * per-epoch training time with cached features vs with re-encoding, and their ratio
    (the number quoted in notebook 04; goal >= 50x);
  * end-to-end time including the one-time encoding for the cached variant.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import torch


def main(argv=None) -> dict:
    import contextlib

    from course_lib import runtime
    from course_lib.data import sonosynth as ss
    from course_lib.methods.clip_adapter import CLIPAdapter
    from course_lib.methods.few_shot import single_thread, text_weights, train_on_features
    from course_lib.models import load_backbone
    from course_lib.models.zero_shot import encode_images

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

    runtime.seed_everything(0)
    pretrained = None if args.pretrained.lower() == "none" else args.pretrained
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sonoclip-tiny without checkpoint warns once
        bb = load_backbone(args.backbone, pretrained=pretrained, verbose=False)
    b = ss.generate_batch(args.n, seed=0, image_size=bb.image_size)
    images = torch.from_numpy(b["image"])
    labels = torch.as_tensor(np.asarray(b["label"]) % 2)
    T = text_weights(bb, "single")
    scale = float(bb.model.logit_scale.detach().exp())
    device = runtime.get_device()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # On CPU both variants run single-threaded: on a shared 2-core box multi-threaded BLAS on tiny
    # matrices mostly measures thread contention, not the work (see few_shot.single_thread).
    threads = single_thread() if device.type == "cpu" else contextlib.nullcontext()
    threads.__enter__()

    # warm-up (first calls allocate / compile kernels)
    with torch.no_grad():
        bb.encode_image(images[:4])

    # (a) cached: encode once, then train on the features
    sync()
    t0 = time.perf_counter()
    feats = encode_images(bb, images, batch_size=256).to(device)
    sync()
    t_encode = time.perf_counter() - t0
    # the cached run is short, so time it 5 times (fresh adapter each time) and keep the median
    runs = []
    for _ in range(5):
        torch.manual_seed(0)
        m = CLIPAdapter(T, logit_scale=scale).to(device)
        sync()
        t0 = time.perf_counter()
        train_on_features(m, feats, labels, epochs=args.epochs, lr=1e-3, batch_size=args.batch_size)
        sync()
        runs.append(time.perf_counter() - t0)
    t_cached = float(np.median(runs))

    # (b) re-encode every mini-batch in every epoch (frozen encoder, no grad)
    torch.manual_seed(0)
    m2 = CLIPAdapter(T, logit_scale=scale).to(device)
    bb.model.eval()
    sync()
    t0 = time.perf_counter()
    train_on_features(
        m2, images.to(device), labels, epochs=args.epochs, lr=1e-3, batch_size=args.batch_size,
        encode=lambda xb: bb.encode_image(xb).float(),
    )
    sync()
    t_reenc = time.perf_counter() - t0

    threads.__exit__(None, None, None)
    same = torch.allclose(
        torch.cat([p.flatten() for p in m.parameters()]), torch.cat([p.flatten() for p in m2.parameters()]), atol=1e-4
    )
    res = dict(
        backbone=bb.name, device=device.type, n=args.n, epochs=args.epochs,
        encode_once_s=t_encode, train_cached_s=t_cached, train_reencode_s=t_reenc,
        per_epoch_ratio=t_reenc / t_cached, end_to_end_ratio=t_reenc / (t_cached + t_encode),
        same_result=bool(same),
    )
    print(f"backbone {bb.name} on {device.type}{' (1 thread)' if device.type == 'cpu' else ''}: "
          f"{args.n} images at {bb.image_size} px, {args.epochs} epochs, CLIP-Adapter")
    print(f"  encode once                 : {t_encode:8.3f} s")
    print(f"  train on cached features    : {t_cached:8.3f} s  ({1e3 * t_cached / args.epochs:.1f} ms/epoch, median of 5)")
    print(f"  train re-encoding each epoch: {t_reenc:8.3f} s  ({1e3 * t_reenc / args.epochs:.1f} ms/epoch)")
    print(f"  speed-up per epoch (training): {res['per_epoch_ratio']:.0f}x   (goal >= 50x)")
    print(f"  speed-up incl. one-time encoding: {res['end_to_end_ratio']:.1f}x over {args.epochs} epochs")
    print(f"  identical adapters (cached == re-encoded): {same}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
