"""CoOp and CoCoOp: learn the prompt's context words, keep CLIP frozen.

Papers
------
* **CoOp** — K. Zhou, J. Yang, C. C. Loy, Z. Liu, "Learning to Prompt for Vision-Language
  Models", IJCV 2022 (arXiv:2109.01134). Sec. 3.2: a prompt given to the text encoder ``g`` is

  .. math:: t_i = [V]_1 [V]_2 \\dots [V]_M [\\mathrm{CLASS}_i]                   \\qquad (2)

  with ``M`` learnable context vectors ``[V]_m`` (word-embedding width) shared by all classes
  ("unified context") or one set per class ("class-specific context", Eq. 4), the class token
  placed at the end, in the middle or at the front (Eq. 3). Prediction (Eq. 3):

  .. math:: p(y=i\\mid x) = \\frac{\\exp(\\cos(g(t_i), f)/\\tau)}{\\sum_j \\exp(\\cos(g(t_j), f)/\\tau)}

  and only the ``[V]_m`` are trained, with cross-entropy, by back-propagating *through the frozen
  text encoder*. Context can be initialised from the word embeddings of a hand-written prompt
  ("a photo of a") or at random (N(0, 0.02^2)).
* **CoCoOp** — K. Zhou, J. Yang, C. C. Loy, Z. Liu, "Conditional Prompt Learning for
  Vision-Language Models", CVPR 2022 (arXiv:2203.05557). Sec. 3.2: a light "Meta-Net"
  ``h_theta`` (Linear-ReLU-Linear, bottleneck 16x) maps the image feature to a token
  ``pi = h_theta(x)`` added to every context vector, ``v_m(x) = v_m + pi`` (Eq. 4), so the
  prompt is conditioned on each image (Eq. 5). Motivation: CoOp's static context over-fits the
  base classes / training domain.

What this module does
---------------------
The prompt learners work on **any open_clip text tower built in open_clip** (``open_clip.CLIP``
and ``CustomTextCLIP`` with a ``TextTransformer``: the course's ``sonoclip-tiny``, OpenAI
ViT-B/16, MetaCLIP...). Hugging Face text towers (BiomedCLIP's PubMedBERT) are refused with a
clear error. They take **image features** (e.g. from the feature cache) rather than images: the
image encoder is frozen in CoOp, so encoding each image once and training on the cached
features gives exactly the same gradients at a fraction of the cost.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib import runtime
from course_lib import train

runtime.register_section(
    "coop",
    quick=dict(n_ctx=4, steps=30, lr=5e-3, batch_size=32, cocoop_steps=20, cocoop_batch_size=8),
    full=dict(n_ctx=16, steps=400, lr=2e-3, batch_size=32, cocoop_steps=200, cocoop_batch_size=8),
)

POSITIONS = ("end", "middle", "front")

__all__ = [
    "TextTower",
    "PromptLearner",
    "CoOp",
    "CoCoOp",
    "train_prompt_learner",
    "nearest_tokens",
    "is_supported",
]


# --------------------------------------------------------------------------- text tower access
class TextTower:
    """Uniform access to the pieces of an open_clip text tower that CoOp needs.

    Works for ``open_clip.CLIP`` (attributes on the model itself) and for ``CustomTextCLIP``
    whose ``.text`` is an open_clip ``TextTransformer``.
    """

    def __init__(self, clip_model: nn.Module):
        if not isinstance(clip_model, nn.Module):
            raise TypeError(
                f"CoOp needs an open_clip model (nn.Module), got {type(clip_model).__name__}; "
                f"pass bb.model from course_lib.models.load_backbone(...)"
            )
        text = getattr(clip_model, "text", None)
        if text is not None and hasattr(text, "token_embedding"):
            if getattr(text, "cls_emb", None) is not None or getattr(text, "use_pad_mask", False):
                raise ValueError(
                    "this text tower appends a CLS token / uses a padding mask (CoCa-style); CoOp here "
                    "supports causal CLIP text towers only. Use a CLIP model such as ViT-B-16 or sonoclip-tiny"
                )
            src, pool, eos = text, getattr(text, "pool_type", "argmax"), getattr(text, "eos_id", None)
        elif hasattr(clip_model, "token_embedding") and hasattr(clip_model, "transformer"):
            src, pool = clip_model, getattr(clip_model, "text_pool_type", "argmax")
            eos = getattr(clip_model, "text_eos_id", None)
        else:
            raise ValueError(
                f"{type(clip_model).__name__} has no open_clip text transformer (token_embedding / "
                f"transformer / ln_final): Hugging Face text towers (e.g. BiomedCLIP) are not supported by "
                f"CoOp here; use an open_clip CLIP model (sonoclip-tiny, ViT-B-16, metaclip-b16)"
            )
        self.token_embedding = src.token_embedding
        self.positional_embedding = src.positional_embedding
        self.transformer = src.transformer
        self.ln_final = src.ln_final
        self.text_projection = src.text_projection
        self.attn_mask = src.attn_mask
        self.pool_type = pool
        self.eos_id = eos
        self.width = self.token_embedding.weight.shape[1]
        self.context_length = self.positional_embedding.shape[0]

    def eot_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """Index of the end-of-text token in each row (the one the pooling reads)."""
        if self.pool_type == "eos" and self.eos_id is not None:
            return (tokens == self.eos_id).int().argmax(dim=-1)
        if self.pool_type == "argmax":
            return tokens.argmax(dim=-1)
        raise ValueError(
            f"text pool type {self.pool_type!r} is not supported by CoOp (need 'argmax' or 'eos'); "
            f"use a CLIP-style text tower"
        )

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Word embeddings ``(N, L, width)`` of token ids (no positional embedding)."""
        return self.token_embedding(tokens)

    # region: coop-encode-embeddings
    def encode_embeddings(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Run the frozen text encoder on word embeddings ``x`` (N, L, width); ``tokens`` only
        tell where the end-of-text token is. Returns un-normalised text features (N, D).

        This mirrors open_clip's ``CLIP.encode_text`` line by line, with ``token_embedding(text)``
        replaced by ``x``. ``x`` may be shorter than the context length: with CLIP's *causal*
        attention mask the output at the end-of-text token depends only on the tokens before it,
        so dropping the padding after it gives the same features for a fraction of the cost.
        """
        cast = self.transformer.get_cast_dtype()
        L = x.shape[1]
        x = x.to(cast) + self.positional_embedding[:L].to(cast)
        mask = self.attn_mask[:L, :L] if self.attn_mask is not None else None
        x = self.transformer(x, attn_mask=mask)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), self.eot_positions(tokens)]
        proj = self.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return x
        # endregion


def is_supported(clip_model) -> bool:
    """True when CoOp can attach to ``clip_model``'s text tower (open_clip causal text transformer)."""
    try:
        TextTower(clip_model)
    except (TypeError, ValueError):
        return False
    return True


def _as_tokens(tokenizer: Callable, texts: Sequence[str]) -> torch.Tensor:
    out = tokenizer(list(texts))
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"tokenizer must return a LongTensor (N, context_length), got {type(out).__name__}; "
            f"pass bb.tokenize or open_clip.get_tokenizer(name)"
        )
    return out.long()


# --------------------------------------------------------------------------- prompt learner
class PromptLearner(nn.Module):
    """The learnable context of CoOp (Eq. 2-4) and the frozen prefix/suffix word embeddings.

    Args:
        clip_model: an open_clip CLIP model (frozen by the caller).
        tokenizer: ``texts -> LongTensor (N, context_length)`` (``bb.tokenize``).
        classnames: one name per class, e.g. ``("benign", "malignant")``.
        n_ctx: number of context vectors ``M`` (ignored when ``ctx_init`` is given: then ``M`` is
            the number of tokens of ``ctx_init``).
        ctx_init: a hand-written prompt such as ``"a photo of a"`` to initialise the context from
            its word embeddings, or ``None`` for a random N(0, 0.02^2) init (the paper's default).
        class_specific: one context per class (CSC, Eq. 4) instead of one shared context.
        position: where the class token goes: ``"end"`` (Eq. 2), ``"middle"`` or ``"front"``.
        suffix: text after the class name (the paper uses ``"."``).
        seed: seed of the random initialisation.
    """

    def __init__(
        self,
        clip_model: nn.Module,
        tokenizer: Callable,
        classnames: Sequence[str],
        n_ctx: int = 4,
        ctx_init: str | None = "a photo of a",
        class_specific: bool = False,
        position: str = "end",
        suffix: str = ".",
        seed: int = 0,
    ):
        super().__init__()
        classnames = [str(c).replace("_", " ").strip() for c in classnames]
        if len(classnames) < 2 or any(not c for c in classnames):
            raise ValueError(
                f"CoOp needs at least two non-empty class names, got {classnames!r}; pass e.g. ('benign', 'malignant')"
            )
        if position not in POSITIONS:
            raise ValueError(f"unknown class-token position {position!r}; choose one of {POSITIONS}")
        tower = TextTower(clip_model)
        self.tower = tower
        self.classnames = classnames
        self.position = position
        self.class_specific = bool(class_specific)
        width = tower.width
        emb_w = tower.token_embedding.weight

        if ctx_init:
            ctx_init = " ".join(ctx_init.replace("_", " ").split())
            init_tok = _as_tokens(tokenizer, [ctx_init])
            n_ctx = int(tower.eot_positions(init_tok)[0]) - 1
            if n_ctx < 1:
                raise ValueError(f"ctx_init {ctx_init!r} tokenises to no words; pass a prompt like 'a photo of a'")
            with torch.no_grad():
                init = tower.embed(init_tok.to(emb_w.device))[0, 1 : 1 + n_ctx].float().clone()
            ctx_text = ctx_init
        else:
            if not isinstance(n_ctx, int) or n_ctx < 1:
                raise ValueError(f"n_ctx must be a positive integer (number of context vectors), got {n_ctx!r}")
            g = torch.Generator().manual_seed(seed)
            init = torch.randn(n_ctx, width, generator=g) * 0.02
            ctx_text = " ".join(["X"] * n_ctx)
        self.n_ctx = n_ctx
        self.ctx_init = ctx_init or None
        if self.class_specific:
            init = init.unsqueeze(0).repeat(len(classnames), 1, 1)
        self.ctx = nn.Parameter(init.to(device=emb_w.device, dtype=emb_w.dtype))

        prompts = [f"{ctx_text} {name}{suffix}" for name in classnames]
        tokens = _as_tokens(tokenizer, prompts)
        if int(tower.eot_positions(tokens).min()) <= n_ctx:
            raise ValueError(
                f"a prompt does not fit the text encoder's context ({tokens.shape[1]} tokens); "
                f"use fewer context vectors or shorter class names"
            )
        name_lens = [int(tower.eot_positions(_as_tokens(tokenizer, [n]))[0]) - 1 for n in classnames]
        # sanity check: the ctx placeholder occupies positions 1..n_ctx of every prompt
        if ctx_init:
            check = _as_tokens(tokenizer, [ctx_init])[0, 1 : 1 + n_ctx]
            if not torch.equal(tokens[:, 1 : 1 + n_ctx], check.expand(len(classnames), -1)):
                raise ValueError("the tokenizer does not split context and class name at a word boundary")
        if tower.attn_mask is not None:  # causal: padding after [EOS] cannot change the result
            tokens = tokens[:, : int(tower.eot_positions(tokens).max()) + 1]
        with torch.no_grad():
            emb = tower.embed(tokens.to(emb_w.device))
        self.register_buffer("tokens", tokens.to(emb_w.device), persistent=False)
        self.register_buffer("prefix", emb[:, :1].clone(), persistent=False)  # [SOS]
        self.register_buffer("suffix", emb[:, 1 + n_ctx :].clone(), persistent=False)  # CLASS . [EOS] pad
        self.name_lens = name_lens

    @property
    def n_classes(self) -> int:
        return len(self.classnames)

    # region: coop-prompt-embeddings
    def prompt_embeddings(self, ctx_shift: torch.Tensor | None = None) -> torch.Tensor:
        """Full prompt embeddings. Without ``ctx_shift``: ``(K, L, width)``; with a CoCoOp shift
        ``pi`` of shape ``(B, width)``: ``(B, K, L, width)`` (Eq. 4 of CoCoOp)."""
        K = self.n_classes
        ctx = self.ctx if self.class_specific else self.ctx.unsqueeze(0).expand(K, -1, -1)  # (K, M, w)
        if ctx_shift is not None:
            ctx = ctx.unsqueeze(0) + ctx_shift[:, None, None, :]  # (B, K, M, w)
            B = ctx.shape[0]
            prefix = self.prefix.unsqueeze(0).expand(B, -1, -1, -1)
            suffix = self.suffix.unsqueeze(0).expand(B, -1, -1, -1)
        else:
            prefix, suffix = self.prefix, self.suffix
        if self.position == "end":
            return torch.cat([prefix, ctx, suffix], dim=-2)
        rows = []
        half = self.n_ctx // 2
        for k, n in enumerate(self.name_lens):
            pre, c, suf = prefix[..., k : k + 1, :, :], ctx[..., k : k + 1, :, :], suffix[..., k : k + 1, :, :]
            name, rest = suf[..., :n, :], suf[..., n:, :]
            if self.position == "middle":
                rows.append(torch.cat([pre, c[..., :half, :], name, c[..., half:, :], rest], dim=-2))
            else:  # front
                rows.append(torch.cat([pre, name, c, rest], dim=-2))
        return torch.cat(rows, dim=-3)
    # endregion


# --------------------------------------------------------------------------- CoOp
class CoOp(nn.Module):
    """CLIP with a learnable prompt context; only ``prompt.ctx`` trains.

    ``forward(image_features)`` returns logits ``(B, K)`` = ``logit_scale * cos(f, g(t_k))``.
    Image features may be raw or normalised (they are L2-normalised here), e.g. straight from
    the feature cache.
    """

    def __init__(self, clip_model: nn.Module, tokenizer: Callable, classnames: Sequence[str], **prompt_kwargs):
        super().__init__()
        prompt = PromptLearner(clip_model, tokenizer, classnames, **prompt_kwargs)  # validates the model
        for p in clip_model.parameters():
            p.requires_grad_(False)
        self.clip = clip_model
        self.prompt = prompt

    @classmethod
    def from_backbone(cls, bb, classnames: Sequence[str], **prompt_kwargs) -> "CoOp":
        """Build from a :func:`course_lib.models.load_backbone` result (uses ``bb.model`` and ``bb.tokenize``)."""
        return cls(bb.model, bb.tokenize, classnames, **prompt_kwargs)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp().detach()

    def text_features(self) -> torch.Tensor:
        """L2-normalised class embeddings ``(K, D)`` produced by the current context."""
        x = self.prompt.prompt_embeddings()
        return F.normalize(self.prompt.tower.encode_embeddings(x, self.prompt.tokens), dim=-1)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        f = _check_features(image_features, self.text_features().shape[-1])
        t = self.text_features().to(f.dtype)
        logits = self.logit_scale.to(f.dtype) * f @ t.t()
        bias = getattr(self.clip, "logit_bias", None)
        return logits + bias.to(f.dtype) if bias is not None else logits


class CoCoOp(CoOp):
    """CoOp + Meta-Net: the context is shifted by ``pi = h(f)`` computed from each image feature.

    Trainable: the context (``M * width``) and the Meta-Net ``Linear(D, D//16) -> ReLU ->
    Linear(D//16, width)`` (with biases), as in CoCoOp Sec. 3.2.
    """

    def __init__(self, clip_model: nn.Module, tokenizer: Callable, classnames: Sequence[str], **prompt_kwargs):
        super().__init__(clip_model, tokenizer, classnames, **prompt_kwargs)
        if self.prompt.class_specific:
            raise ValueError("CoCoOp uses one shared context; pass class_specific=False")
        with torch.no_grad():
            D = int(self.text_features().shape[-1])
        hidden = max(D // 16, 1)
        ref = self.prompt.ctx
        self.meta_net = nn.Sequential(nn.Linear(D, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, self.prompt.tower.width))
        self.meta_net.to(device=ref.device, dtype=ref.dtype)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        K = self.prompt.n_classes
        f = F.normalize(image_features, dim=-1)
        pi = self.meta_net(f.to(self.prompt.ctx.dtype))  # (B, width)
        x = self.prompt.prompt_embeddings(pi)  # (B, K, L, width)
        B, _, L, W = x.shape
        tok = self.prompt.tokens.unsqueeze(0).expand(B, -1, -1).reshape(B * K, -1)
        t = F.normalize(self.prompt.tower.encode_embeddings(x.reshape(B * K, L, W), tok), dim=-1).view(B, K, -1)
        return self.logit_scale.to(f.dtype) * torch.einsum("bd,bkd->bk", f, t.to(f.dtype))


def _check_features(f: torch.Tensor, dim: int) -> torch.Tensor:
    if not isinstance(f, torch.Tensor) or f.ndim != 2:
        raise ValueError(
            f"image features must be a 2-D tensor (batch, {dim}), got "
            f"{tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__}; encode images with bb.encode_image"
        )
    if f.shape[1] != dim:
        raise ValueError(
            f"image features have width {f.shape[1]} but the text tower outputs {dim}; "
            f"use features from the same backbone as the CoOp model"
        )
    return F.normalize(f.float() if f.dtype in (torch.float16, torch.bfloat16) else f, dim=-1)


# --------------------------------------------------------------------------- training
# region: coop-train
def train_prompt_learner(
    model: CoOp,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int,
    lr: float = 2e-3,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = False,
    eval_fn: Callable[[CoOp], float] | None = None,
    eval_every: int = 0,
) -> dict:
    """Train the context (and Meta-Net) with cross-entropy, SGD (momentum 0.9, no weight decay) and
    a per-step cosine schedule to zero, as in CoOp Sec. 4.1 (lr 0.002), through
    :func:`course_lib.train.fit`. Works on cached image features: every step draws a seeded random
    mini-batch of ``batch_size`` support samples.

    Returns ``{"loss": [...], "eval": [(step, value), ...]}``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}; pass e.g. steps=P.section('coop').steps")
    labels = torch.as_tensor(labels, dtype=torch.long)
    if len(features) == 0 or len(features) != len(labels):
        raise ValueError(
            f"need a non-empty support set with one label per feature, got {len(features)} features and "
            f"{len(labels)} labels; sample it with few_shot_indices(labels, k)"
        )
    if int(labels.max()) >= model.prompt.n_classes or int(labels.min()) < 0:
        raise ValueError(f"labels must lie in 0..{model.prompt.n_classes - 1}, got {labels.unique().tolist()}")
    device = model.prompt.ctx.device
    features, labels = features.to(device), labels.to(device)
    g = torch.Generator().manual_seed(seed)
    evals: list = []

    def batch(step):
        idx = torch.randperm(len(labels), generator=g)[:batch_size].to(device)
        return features[idx], labels[idx]

    def forward(m, fy):
        return F.cross_entropy(m(fy[0]), fy[1])

    def after_step(step, m, opt):
        if eval_fn is not None and eval_every and ((step + 1) % eval_every == 0 or step == steps - 1):
            m.eval()
            with torch.no_grad():
                evals.append((step + 1, float(eval_fn(m))))
            m.train()

    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    hist = train.fit(model, batch, steps=steps, optimizer=opt, scheduler="cosine", forward=forward,
                     after_step=after_step, progress=progress, desc="CoOp")
    model.eval()
    return {"loss": hist["step_loss"], "eval": evals}
# endregion


@torch.no_grad()
def nearest_tokens(model: CoOp, decoder: Callable[[list[int]], str] | None = None, k: int = 3) -> list[list[tuple[str, float]]]:
    """For each learned context vector, the ``k`` vocabulary words with the closest embedding
    (Euclidean distance), as CoOp Sec. 4.5 "Interpretability" does.

    ``decoder`` turns a list of token ids into text (default: open_clip's BPE decoder).
    Returns one list per context vector (for class-specific context: per class, per vector).
    """
    if decoder is None:
        from open_clip.tokenizer import _tokenizer

        decoder = _tokenizer.decode
    E = model.prompt.tower.token_embedding.weight.float()
    ctx = model.prompt.ctx.float().reshape(-1, E.shape[1])
    d = torch.cdist(ctx, E)
    vals, idx = d.topk(k, dim=1, largest=False)
    out = []
    for i in range(ctx.shape[0]):
        out.append([(decoder([int(j)]).strip(), float(v)) for j, v in zip(idx[i], vals[i])])
    return out
