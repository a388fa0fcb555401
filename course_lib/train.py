"""The one training loop of the course (``fit``), with ``evaluate``, ``predict`` and ``optimizer_step``;
every library trainer and notebook trains through :func:`fit`.

``fit`` trains any ``nn.Module`` with AdamW (Loshchilov & Hutter, ICLR 2019) and a per-step
schedule of linear warm-up followed by cosine decay to zero (Loshchilov & Hutter, SGDR,
ICLR 2017, eq. 5 without restarts): ``lr_t = lr * 0.5 * (1 + cos(pi * (t - W) / (T - W)))``
for ``t >= W`` and ``lr * (t + 1) / W`` before. On CUDA it runs the forward pass under
``runtime.autocast`` (bf16, or fp16 with a ``GradScaler``); on CPU both are no-ops, so the
same code runs in both profiles. Progress is shown with ``tqdm.auto`` and everything is
recorded in a ``history`` dict that :func:`course_lib.viz.plot_history` draws.

Batches are ``(x, y)`` tuples/lists, or dicts with ``"x"``/``"image"`` and one of
``"y"``/``"label"``/``"mask"``; for anything else pass ``batch_fn=lambda b: (x, y)``. The
model is called as ``model(x)`` and the loss as ``loss_fn(output, y)``.
"""
from __future__ import annotations

import math
import time
import warnings
from typing import Any, Callable, Iterable

import numpy as np

from . import runtime

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("cosine", "constant", None)


# --------------------------------------------------------------------------- helpers
def count_parameters(model, trainable: bool | None = None) -> int:
    """Number of parameters of ``model`` (shared ones counted once): all of them (``trainable=None``),
    those with ``requires_grad`` (``trainable=True``) or the frozen ones (``trainable=False``).
    The one parameter counter of the course: every "what trains" table and test uses it."""
    if trainable not in (None, True, False):
        raise ValueError(f"trainable must be None (all), True or False, got {trainable!r}")
    return sum(p.numel() for p in model.parameters() if trainable is None or p.requires_grad == trainable)


def parameter_summary(model) -> dict[str, int]:
    """``{"total", "trainable", "frozen"}`` from :func:`count_parameters`."""
    return {"total": count_parameters(model), "trainable": count_parameters(model, True),
            "frozen": count_parameters(model, False)}


def model_device(model):
    """Device of the model's first parameter/buffer, else :func:`runtime.get_device`."""
    import torch

    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device(runtime.get_device())


def to_device(obj, device, non_blocking: bool = False):
    """Move tensors nested in tuples/lists/dicts to ``device``."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, dict):
        moved = {k: to_device(v, device, non_blocking) for k, v in obj.items()}
        try:
            return type(obj)(moved)
        except TypeError:
            return moved
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device, non_blocking) for v in obj)
    return obj


def default_batch_fn(batch) -> tuple[Any, Any]:
    """``(x, y)`` from a tuple/list batch or a dict batch (see module docstring)."""
    if isinstance(batch, (tuple, list)):
        if len(batch) < 2:
            raise ValueError(
                f"a tuple batch must be (x, y), got {len(batch)} element(s); "
                f"return (inputs, targets) from your dataset or pass batch_fn=lambda b: (x, y)"
            )
        return batch[0], batch[1]
    if isinstance(batch, dict):
        xk = next((k for k in ("x", "image") if k in batch), None)
        yks = [k for k in ("y", "label", "mask") if k in batch]
        if "y" in yks:
            yks = ["y"]
        if xk is None or len(yks) != 1:
            raise ValueError(
                f"cannot tell inputs/targets apart in a dict batch with keys {sorted(batch)}: need 'x' or "
                f"'image', and exactly one of 'y', 'label', 'mask'; pass e.g. "
                f"batch_fn=lambda b: (b['image'], b['mask'])"
            )
        return batch[xk], batch[yks[0]]
    raise TypeError(
        f"unsupported batch type {type(batch).__name__}; yield (x, y) tuples or dicts, or pass batch_fn=..."
    )


def lr_lambda(total_steps: int, warmup: int = 0, scheduler: str | None = "cosine") -> Callable[[int], float]:
    """Multiplier of the base lr at step ``t`` (0-based): linear warm-up, then cosine or constant."""

    def f(t: int) -> float:
        if t < warmup:
            return (t + 1) / warmup
        if scheduler == "cosine":
            span = max(total_steps - warmup, 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(t - warmup, span) / span))
        return 1.0

    return f


def _make_optimizer(optimizer, params, lr, weight_decay, betas):
    import torch

    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas)
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, betas=betas)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=betas[0])
    raise ValueError(f"unknown optimizer {optimizer!r}: use one of {OPTIMIZERS} or pass a torch.optim.Optimizer")


def optimizer_step(loss, optimizer, scaler=None, scheduler=None, grad_clip: float | None = None,
                   params: Iterable | None = None) -> None:
    """One (mixed-precision) optimisation step on the scalar ``loss``; every training loop uses it.

    In order: ``optimizer.zero_grad(set_to_none=True)``; backward (``scaler.scale(loss).backward()``
    with a ``GradScaler``, else ``loss.backward()``); optionally clip the global gradient norm to
    ``grad_clip`` — with a scaler the gradients are first unscaled (``scaler.unscale_``) so the
    threshold applies to the true gradients; ``scaler.step(optimizer)`` + ``scaler.update()`` (or
    ``optimizer.step()``); finally ``scheduler.step()`` if a scheduler is given (a per-step
    schedule). ``params`` are the tensors whose norm is clipped (default: every parameter in the
    optimizer's param groups). A disabled scaler (``runtime.grad_scaler`` on CPU or with bf16)
    makes this identical to the plain path. Nothing here depends on the device.
    """
    import torch

    optimizer.zero_grad(set_to_none=True)
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if grad_clip is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)
        if params is None:
            params = [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if scheduler is not None:
        scheduler.step()


def _cat(chunks: list):
    import torch

    first = chunks[0]
    if isinstance(first, torch.Tensor):
        return torch.cat([c.reshape(1) if c.ndim == 0 else c for c in chunks])
    if isinstance(first, dict):
        return {k: _cat([c[k] for c in chunks]) for k in first}
    if isinstance(first, (list, tuple)) and first and isinstance(first[0], torch.Tensor):
        return type(first)(_cat([c[i] for c in chunks]) for i in range(len(first)))
    out = []
    for c in chunks:
        out.extend(c if isinstance(c, (list, tuple)) else [c])
    return out


def _detach_cpu(obj):
    import torch

    if isinstance(obj, torch.Tensor):
        obj = obj.detach()
        return (obj.float() if obj.is_floating_point() else obj).cpu()
    if isinstance(obj, dict):
        return {k: _detach_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_detach_cpu(v) for v in obj)
    return obj


# --------------------------------------------------------------------------- evaluate
def evaluate(model, loader, metric_fn: Callable, device=None, batch_fn: Callable | None = None) -> dict[str, float]:
    """Run ``model`` over ``loader`` (eval mode, no grad, AMP on CUDA), concatenate outputs and
    targets on the CPU, and return ``metric_fn(outputs, targets)`` as a dict of floats.

    ``metric_fn`` sees *all* outputs at once, so ranking metrics (AUC) are computed correctly;
    it may return a float (stored as ``"metric"``) or a dict. The model's train/eval mode is restored.
    """
    import torch

    device = torch.device(device) if device is not None else model_device(model)
    batch_fn = batch_fn or default_batch_fn
    was_training = model.training
    model.eval()
    outs, ys = [], []
    try:
        with torch.no_grad():
            for batch in loader:
                x, y = batch_fn(batch)
                x = to_device(x, device, non_blocking=device.type == "cuda")
                with runtime.autocast(device):
                    out = model(x)
                outs.append(_detach_cpu(out))
                ys.append(_detach_cpu(y))
    finally:
        model.train(was_training)
    if not outs:
        raise ValueError("evaluate() got an empty loader; check the dataset/split size")
    res = metric_fn(_cat(outs), _cat(ys))
    if not isinstance(res, dict):
        res = {"metric": res}
    return {k: float(v.item() if hasattr(v, "item") else v) for k, v in res.items()}


# --------------------------------------------------------------------------- predict
def predict(model, x, *, batch_size: int = 64, fn: Callable | None = None, device=None):
    """Batched inference: ``fn(model, xb)`` (default ``model(xb)``) over chunks of ``x`` in eval mode,
    without gradients and under AMP on CUDA; outputs concatenated on the CPU (float32).

    ``x`` is a tensor (or anything sliceable with a length). The model's train/eval mode is restored.
    The one batched-inference helper of the course.
    """
    import torch

    if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = len(x)
    if n == 0:
        raise ValueError("predict() got an empty input (0 samples); check the split size")
    device = torch.device(device) if device is not None else model_device(model)
    was_training = model.training
    model.eval()
    outs = []
    try:
        with torch.no_grad():
            for i in range(0, n, batch_size):
                xb = to_device(x[i:i + batch_size], device, non_blocking=device.type == "cuda")
                with runtime.autocast(device):
                    out = fn(model, xb) if fn is not None else model(xb)
                outs.append(_detach_cpu(out))
    finally:
        model.train(was_training)
    return _cat(outs)


# --------------------------------------------------------------------------- fit
# region: fit-loop
def fit(
    model,
    data,
    loss_fn: Callable | None = None,
    *,
    epochs: int | None = None,
    steps: int | None = None,
    lr: float | None = None,
    optimizer: str | Any = "adamw",
    weight_decay: float = 1e-2,
    betas: tuple[float, float] = (0.9, 0.999),
    scheduler: str | None | Any = "cosine",
    warmup: int = 0,
    val_loader: Iterable | None = None,
    val_fn: Callable | None = None,
    params: Iterable | None = None,
    device=None,
    progress: bool = True,
    desc: str = "",
    batch_fn: Callable | None = None,
    grad_clip: float | None = None,
    forward: Callable | None = None,
    after_step: Callable | None = None,
    clip_params: Iterable | None = None,
) -> dict:
    """Train ``model`` and return its history: the one training loop of the course.

    Parameters
    ----------
    data : an iterable of batches (a ``DataLoader``; iterated once per epoch, or cycled when
        ``steps`` is given), or a callable ``data(step) -> batch`` that draws batch ``step``
        (episodic / on-the-fly sampling; needs ``steps``).
    loss_fn : ``loss_fn(model(x), y)`` with ``(x, y) = batch_fn(batch)``. Not needed with ``forward``.
    forward : ``forward(model, batch) -> loss`` (or ``(loss, logs)``, ``logs`` a dict of floats
        recorded per step) for anything that is not "model(x) then loss" (contrastive pairs,
        episodes, masked losses, regularisers). It runs under autocast like the default path.
    epochs / steps : how long to train (exactly one of them).
    lr : the peak learning rate (not needed with an optimizer instance).
    optimizer : ``"adamw"`` (default), ``"adam"``, ``"sgd"`` (momentum = ``betas[0]``) or an
        optimizer instance (then ``lr``/``weight_decay``/``betas``/``params`` are its own).
    scheduler : ``"cosine"`` (per step, to 0 at the end), ``"constant"``/``None``, or an LR scheduler
        instance built on the optimizer instance; ``warmup`` = linear warm-up steps.
    params : what to optimise (default: the parameters with ``requires_grad``); param-group dicts work.
    after_step : ``after_step(step, model, optimizer)`` after every optimiser step (e.g. ARENA's
        proximal step, or clamping).
    val_loader, val_fn : evaluated after every epoch with :func:`evaluate`.
    grad_clip : clip the global gradient norm (of ``clip_params``, default all optimised) to this value.

    Returns
    -------
    dict with ``step_loss`` and ``lr`` (per step), ``logs`` (per-step dicts from ``forward``),
    ``train_loss`` and ``epoch_seconds`` (per epoch; one entry in step mode), ``val`` plus
    ``val_<name>`` lists, ``seconds``, ``steps``, ``epochs``, ``device``, ``amp`` and ``parameters``.
    """
    import torch
    from tqdm.auto import tqdm

    if (epochs is None) == (steps is None):
        raise ValueError(f"give exactly one of epochs= and steps= (got epochs={epochs!r}, steps={steps!r}); "
                         f"e.g. epochs=P.epochs, or steps=P.section(...).steps for episodic training")
    budget = epochs if epochs is not None else steps
    what = "epochs" if epochs is not None else "steps"
    if not isinstance(budget, (int, np.integer)) or isinstance(budget, bool) or budget <= 0:
        raise ValueError(f"{what} must be a positive integer, got {budget!r}; e.g. {what}=P.{what if what == 'epochs' else 'steps'}")
    if budget > 10_000_000:
        raise ValueError(f"{what}={budget} is beyond any course budget (max 10,000,000); check the value")
    if callable(data) and not hasattr(data, "__iter__") and steps is None:
        raise ValueError("a callable data(step) -> batch needs steps=...; pass an iterable loader for epochs=...")
    if loss_fn is None and forward is None:
        raise ValueError("give loss_fn(output, target) or forward(model, batch) -> loss")
    is_opt = isinstance(optimizer, torch.optim.Optimizer)
    if not is_opt and not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}; e.g. lr=P.lr")
    custom_sched = scheduler is not None and not isinstance(scheduler, str)
    if not custom_sched and scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}: use 'cosine', 'constant', None or an LR scheduler instance")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0 steps, got {warmup}")
    if device is not None:
        device = torch.device(device)
        model.to(device)
    else:
        device = model_device(model)
    batch_fn = batch_fn or default_batch_fn
    if callable(data) and not hasattr(data, "__iter__"):
        steps_per_epoch = None
    else:
        try:
            steps_per_epoch = len(data)  # type: ignore[arg-type]
        except TypeError:
            steps_per_epoch = None
        if steps_per_epoch == 0:
            raise ValueError("the training loader is empty (0 batches); check the dataset size and batch_size/drop_last")

    if params is None and not is_opt:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError(
                "the model has no trainable parameters (all requires_grad=False); unfreeze some, "
                "or pass params=[...]"
            )
    opt = _make_optimizer(optimizer, params, lr, weight_decay, betas)
    total = steps if steps is not None else (epochs * steps_per_epoch if steps_per_epoch else 0)
    if custom_sched:
        sched = scheduler
    else:
        if scheduler == "cosine" and not total:
            raise ValueError("the cosine schedule needs len(data) or steps=; use scheduler='constant' for an iterable")
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total, warmup, scheduler))
    scaler = runtime.grad_scaler(device)
    if val_loader is not None and val_fn is None:
        if loss_fn is None:
            raise ValueError("val_loader needs val_fn(outputs, targets) when training with forward=")

        def val_fn(out, y):
            return {"loss": loss_fn(out, y)}

    amp = runtime.amp_dtype(device)
    hist: dict[str, Any] = dict(
        step_loss=[], lr=[], logs=[], train_loss=[], epoch_seconds=[], val=[], seconds=0.0, steps=0,
        epochs=epochs, device=str(device), amp=str(amp).replace("torch.", "") if amp else "off",
        parameters=parameter_summary(model),
    )
    nb = device.type == "cuda"

    def batches(epoch: int):
        if steps_per_epoch is None and callable(data) and not hasattr(data, "__iter__"):
            for t in range(steps):
                yield data(t)
        elif steps is None:
            yield from data
        else:  # cycle an iterable for a fixed number of steps
            done = 0
            while done < steps:
                empty = True
                for b in data:
                    empty = False
                    yield b
                    done += 1
                    if done >= steps:
                        return
                if empty:
                    raise ValueError("the training loader yielded no batches; check the dataset size and batch_size")

    bar = tqdm(total=total or None, desc=desc or "fit", disable=not progress, leave=True)
    t_start = time.perf_counter()
    model.train()
    step = 0
    try:
        for epoch in range(epochs or 1):
            t_ep, losses, sizes = time.perf_counter(), [], []
            for batch in batches(epoch):
                logs = None
                with runtime.autocast(device):
                    if forward is not None:
                        out = forward(model, to_device(batch, device, non_blocking=nb))
                        loss, logs = out if isinstance(out, tuple) else (out, None)
                        n = 1
                    else:
                        x, y = batch_fn(batch)
                        x = to_device(x, device, non_blocking=nb)
                        y = to_device(y, device, non_blocking=nb)
                        loss = loss_fn(model(x), y)
                        n = _batch_len(x)
                if loss.ndim:
                    raise ValueError(
                        f"the loss must be a scalar, got shape {tuple(loss.shape)}; reduce it, e.g. .mean()"
                    )
                lv = float(loss.detach())
                if not math.isfinite(lv):
                    raise FloatingPointError(
                        f"the loss became {lv} at epoch {epoch + 1}, step {step + 1}; lower lr "
                        f"(now {opt.param_groups[0]['lr']:.2e}), add warmup, or set grad_clip=1.0"
                    )
                hist["lr"].append(opt.param_groups[0]["lr"])
                with warnings.catch_warnings():
                    # an fp16 GradScaler skips the first step(s) on inf grads; the scheduler then
                    # (harmlessly) "steps before the optimizer", which torch warns about
                    warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")
                    optimizer_step(loss, opt, scaler, sched, grad_clip, params=clip_params)
                if after_step is not None:
                    after_step(step, model, opt)
                step += 1
                hist["step_loss"].append(lv)
                if logs is not None:
                    hist["logs"].append({k: float(v) for k, v in logs.items()})
                losses.append(lv)
                sizes.append(n)
                bar.update(1)
                post = {"epoch": f"{epoch + 1}/{epochs}"} if epochs else {}
                bar.set_postfix(loss=f"{lv:.4f}", refresh=False, **post)
            if not losses:
                raise ValueError("the training loader yielded no batches; check the dataset size and batch_size")
            hist["train_loss"].append(float(np.average(losses, weights=sizes)))
            if val_loader is not None:
                res = evaluate(model, val_loader, val_fn, device=device, batch_fn=batch_fn)
                hist["val"].append(res)
                for k, v in res.items():
                    hist.setdefault(f"val_{k}", []).append(v)
            hist["epoch_seconds"].append(time.perf_counter() - t_ep)
    finally:
        bar.close()
    hist["seconds"] = time.perf_counter() - t_start
    hist["steps"] = step
    return hist
# endregion


def _batch_len(x) -> int:
    import torch

    if isinstance(x, torch.Tensor) and x.ndim:
        return int(x.shape[0])
    if isinstance(x, dict) and x:
        return _batch_len(next(iter(x.values())))
    if isinstance(x, (list, tuple)) and x:
        return _batch_len(x[0]) if isinstance(x[0], torch.Tensor) else len(x)
    return 1
