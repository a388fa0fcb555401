"""The CLIP-driven universal model for partially labelled assemblies: structure-name embeddings drive a
controller that writes the weights of one small segmentation head per structure (notebook 08).

Paper: J. Liu, Y. Zhang, J.-N. Chen, J. Xiao, Y. Lu, B. A. Landman, Y. Yuan, A. Yuille, Y. Tang,
Z. Zhou, "CLIP-Driven Universal Model for Organ Segmentation and Tumor Detection", ICCV 2023.

What is implemented (Sec. 3 of the paper, at course size):

* **text branch** -- each structure k has a fixed embedding ``omega_k`` (the frozen CLIP text
  embedding of a prompt naming it, :func:`text_embeddings`; or a control: :func:`random_embeddings`,
  :func:`one_hot_embeddings`), mapped by a trainable linear layer;
* **image branch** -- a MONAI ``UNet`` returns a feature map ``F`` (``head_channels`` channels) and a
  global image feature ``f = GAP(F)``;
* **text-based controller** -- an MLP on ``[omega_k, f]`` outputs the parameters ``theta_k`` of a head;
* **dynamic segmentation head** -- three 1x1 convolutions (``head_channels`` -> 8 -> 8 -> 1, ReLU after
  the first two) whose weights are ``theta_k``: ``P_k = sigmoid(((F * theta_k1) * theta_k2) * theta_k3)``;
  one sigmoid map per structure, so a new structure needs an embedding, not a new output layer;
* **loss** -- the masked BCE + Dice over the annotated structures
  (:func:`course_lib.losses.masked_bce_dice`), trained by :func:`partial_labels.train_partial`.

Differences from the paper (size and one simplification): a 2D MONAI UNet instead of Swin UNETR /
3D U-Net; the global feature is pooled from the decoder output (MONAI's UNet does not expose its
bottleneck), the course's sonoclip-tiny text encoder with an ultrasound prompt instead of CLIP with
"A computerized tomography of a [CLS]".
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

#: prompt template for the structure names (the paper's CT template adapted to ultrasound)
PROMPT = "an ultrasound image of the {}"


class UniversalModel(nn.Module):
    """``forward(x) -> (B, K, H, W)`` logits, one per row of ``embeddings`` (``(K, D)``, frozen)."""

    def __init__(self, embeddings: torch.Tensor, features: Sequence[int] = (8, 16, 32, 32), head_channels: int = 8,
                 hidden: int = 8, embed_dim: int = 32, controller_width: int = 64):
        super().__init__()
        from monai.networks.nets import UNet

        emb = torch.as_tensor(embeddings, dtype=torch.float32)
        if emb.ndim != 2 or emb.shape[0] < 1:
            raise ValueError(f"embeddings must be (K, D) with one row per structure, got shape {tuple(emb.shape)}")
        features = tuple(int(f) for f in features)
        self.backbone = UNet(spatial_dims=2, in_channels=1, out_channels=head_channels, channels=features,
                             strides=(2,) * (len(features) - 1), num_res_units=1, norm="batch")
        self.register_buffer("embeddings", emb)
        self.C, self.h = int(head_channels), int(hidden)
        self.shapes = [(self.h, self.C), (self.h,), (self.h, self.h), (self.h,), (1, self.h), (1,)]
        n_params = sum(int(torch.Size(s).numel()) for s in self.shapes)
        self.text_proj = nn.Linear(emb.shape[1], embed_dim)
        self.controller = nn.Sequential(nn.Linear(embed_dim + self.C, controller_width), nn.ReLU(),
                                        nn.Linear(controller_width, n_params))

    @property
    def num_structures(self) -> int:
        return int(self.embeddings.shape[0])

    # region: universal-controller
    def head_parameters(self, feats: torch.Tensor) -> torch.Tensor:
        """``theta``: ``(B, K, P)`` head parameters from ``[text_proj(omega_k), GAP(F)]`` for every structure."""
        B, K = feats.shape[0], self.num_structures
        f = feats.mean((2, 3))  # global image feature (B, C)
        t = self.text_proj(self.embeddings)  # (K, E)
        z = torch.cat([t[None].expand(B, -1, -1), f[:, None].expand(-1, K, -1)], dim=2)
        return self.controller(z)

    def dynamic_head(self, feats: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Three 1x1 convolutions with per-(sample, structure) weights ``theta`` -> logits ``(B, K, H, W)``.

        A 1x1 convolution is a matrix product over the channels at every pixel: ``y = W x + b`` with the
        pixels as columns (``baddbmm`` = bias + batched matrix product; the first layer does all K heads of a
        sample in one product)."""
        B, K = theta.shape[:2]
        C, h, (H, W) = self.C, self.h, feats.shape[2:]
        w1, b1, w2, b2, w3, b3 = torch.split(theta, [int(torch.Size(s).numel()) for s in self.shapes], 2)
        y = torch.baddbmm(b1.reshape(B, K * h, 1), w1.reshape(B, K * h, C), feats.reshape(B, C, H * W)).relu()
        y = torch.baddbmm(b2.reshape(B * K, h, 1), w2.reshape(B * K, h, h), y.reshape(B * K, h, H * W)).relu()
        y = torch.baddbmm(b3.reshape(B * K, 1, 1), w3.reshape(B * K, 1, h), y)
        return y.reshape(B, K, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)  # (B, C, H, W)
        return self.dynamic_head(feats, self.head_parameters(feats))
    # endregion


@torch.no_grad()
def text_embeddings(structures: Sequence[str], backbone="sonoclip-tiny", prompt: str = PROMPT) -> torch.Tensor:
    """``(K, D)`` L2-normalised text embeddings of ``prompt.format(name)`` (underscores -> spaces) from a
    course backbone (a name for :func:`course_lib.models.load_backbone`, or a loaded backbone), on the CPU."""
    if isinstance(backbone, str):
        from course_lib.models import load_backbone

        backbone = load_backbone(backbone, device="cpu", verbose=False)
    texts = [prompt.format(s.replace("_", " ")) for s in structures]
    return backbone.encode_text(texts).float().cpu()


def random_embeddings(K: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Control: ``(K, dim)`` random unit vectors (no language in them)."""
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(K, dim, generator=g)
    return e / e.norm(dim=1, keepdim=True)


def one_hot_embeddings(K: int) -> torch.Tensor:
    """Control: the ``K x K`` identity (one learned code per structure, the fixed-output-layer baseline)."""
    return torch.eye(K)
