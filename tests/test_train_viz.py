"""course_lib.train (fit/evaluate/count_parameters) and course_lib.viz (overlays, grids, curves)."""
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from course_lib import train, viz  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models are fastest single-threaded (and the CI box has 2 shared cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def toy_loader(n=128, batch=32, seed=0, as_dict=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) > 0).long()
    if as_dict:
        return [{"image": x[i : i + batch], "label": y[i : i + batch]} for i in range(0, n, batch)]
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch, shuffle=False)


def accuracy(out, y):
    return {"acc": (out.argmax(1) == y).float().mean()}


# --------------------------------------------------------------------------- train
def test_count_parameters_exact():
    m = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))  # 15 + 8
    m[0].requires_grad_(False)
    assert train.count_parameters(m) == 23
    assert train.count_parameters(m, trainable=True) == 8
    assert train.count_parameters(m, trainable=False) == 15
    assert train.parameter_summary(m) == {"total": 23, "trainable": 8, "frozen": 15}
    with pytest.raises(ValueError, match="trainable must be"):
        train.count_parameters(m, trainable="yes")


def test_fit_reduces_loss_and_records_history():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    loader = toy_loader()
    h = train.fit(model, loader, nn.functional.cross_entropy, epochs=4, lr=0.1, warmup=2,
                  val_loader=loader, val_fn=accuracy, progress=False)
    assert h["steps"] == 16 and len(h["step_loss"]) == 16 and len(h["lr"]) == 16
    assert len(h["train_loss"]) == 4 and len(h["val_acc"]) == 4 and len(h["epoch_seconds"]) == 4
    assert h["train_loss"][-1] < 0.6 * h["train_loss"][0]
    assert h["val_acc"][-1] > 0.85
    # warm-up then cosine: lr rises linearly for 2 steps, peaks, decays towards 0
    assert h["lr"][0] == pytest.approx(0.05) and h["lr"][1] == pytest.approx(0.1)
    assert h["lr"][-1] < 0.01 and all(a >= b for a, b in zip(h["lr"][1:], h["lr"][2:]))
    assert h["parameters"] == {"total": 10, "trainable": 10, "frozen": 0}
    assert h["amp"] == "off" and h["device"] == "cpu"


def test_lr_lambda_cosine_values():
    f = train.lr_lambda(total_steps=10, warmup=0, scheduler="cosine")
    assert f(0) == pytest.approx(1.0)
    assert f(5) == pytest.approx(0.5)
    assert f(10) == pytest.approx(0.0)
    assert train.lr_lambda(10, 0, "constant")(7) == 1.0


def test_fit_trains_only_params_and_dict_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    frozen_before = model[0].weight.detach().clone()
    h = train.fit(model, toy_loader(as_dict=True), nn.functional.cross_entropy, epochs=1, lr=0.05,
                  params=model[1].parameters(), scheduler="constant", progress=False)
    assert torch.equal(model[0].weight, frozen_before)
    assert h["steps"] == 4 and h["val"] == []


def test_evaluate_restores_mode_and_sees_all_outputs():
    model = nn.Linear(4, 2)
    model.train()
    seen = {}

    def metric(out, y):
        seen["n"] = len(y)
        return float(out.shape[0])

    res = train.evaluate(model, toy_loader(n=70, batch=32), metric)
    assert res == {"metric": 70.0} and seen["n"] == 70 and model.training


def test_fit_bad_inputs():
    model = nn.Linear(4, 2)
    loss = nn.functional.cross_entropy
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        train.fit(model, toy_loader(), loss, epochs=0, lr=0.1, progress=False)
    with pytest.raises(ValueError, match="lr must be a positive"):
        train.fit(model, toy_loader(), loss, epochs=1, lr=-1, progress=False)
    with pytest.raises(ValueError, match="unknown optimizer"):
        train.fit(model, toy_loader(), loss, epochs=1, lr=0.1, optimizer="lion", progress=False)
    with pytest.raises(ValueError, match="unknown scheduler"):
        train.fit(model, toy_loader(), loss, epochs=1, lr=0.1, scheduler="step", progress=False)
    with pytest.raises(ValueError, match="empty"):
        train.fit(model, [], loss, epochs=1, lr=0.1, progress=False)
    frozen = nn.Linear(4, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train.fit(frozen, toy_loader(), loss, epochs=1, lr=0.1, progress=False)
    with pytest.raises(ValueError, match="batch_fn=lambda b"):
        bad = [{"image": torch.zeros(2, 4), "label": torch.zeros(2).long(), "mask": torch.zeros(2, 4)}]
        train.fit(model, bad, loss, epochs=1, lr=0.1, progress=False)
    with pytest.raises(ValueError, match="scalar"):
        train.fit(model, toy_loader(), lambda o, y: o.sum(1), epochs=1, lr=0.1, progress=False)
    with pytest.raises(FloatingPointError, match="lower lr"):
        train.fit(model, toy_loader(), lambda o, y: o.sum() * float("nan"), epochs=1, lr=0.1, progress=False)



def _two_copies(seed=0):
    torch.manual_seed(seed)
    a = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    b = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    b.load_state_dict(a.state_dict())
    return a, b


def test_optimizer_step_disabled_scaler_equals_manual_step():
    a, b = _two_copies()
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for x, y in toy_loader(n=96, batch=32):
        train.optimizer_step(nn.functional.cross_entropy(a(x), y), opt_a, scaler)
        opt_b.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(b(x), y).backward()
        opt_b.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    # scaler=None takes the plain path and gives the same numbers
    c, _ = _two_copies()
    opt_c = torch.optim.SGD(c.parameters(), lr=0.1, momentum=0.9)
    for x, y in toy_loader(n=96, batch=32):
        train.optimizer_step(nn.functional.cross_entropy(c(x), y), opt_c)
    for pc, pb in zip(c.parameters(), b.parameters()):
        assert torch.equal(pc, pb)


def test_optimizer_step_clips_gradients():
    x, y = next(iter(toy_loader(n=32, batch=32)))
    a, b = _two_copies()
    opt = torch.optim.SGD(a.parameters(), lr=0.0)  # lr 0: the clipped grads stay for inspection

    def big(m):
        return 100.0 * nn.functional.cross_entropy(m(x), y)

    big(b).backward()
    raw = torch.cat([p.grad.flatten() for p in b.parameters()])
    clip = 0.05
    assert raw.norm() > 10 * clip  # the test is meaningful: clipping has to act
    train.optimizer_step(big(a), opt, torch.amp.GradScaler("cpu", enabled=False), grad_clip=clip)
    got = torch.cat([p.grad.flatten() for p in a.parameters()])
    assert got.norm() <= clip * (1 + 1e-5)
    torch.testing.assert_close(got, raw * (clip / raw.norm()), rtol=1e-4, atol=1e-8)
    # an active scaler is unscaled before clipping: the step equals a manual clipped step
    a, b = _two_copies()
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, enabled=True)
    train.optimizer_step(big(a), opt_a, scaler, grad_clip=clip, params=list(a.parameters()))
    big(b).backward()
    nn.utils.clip_grad_norm_(b.parameters(), clip)
    opt_b.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-7)


def test_optimizer_step_steps_the_scheduler():
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5**s)
    x, y = next(iter(toy_loader(n=32, batch=32)))
    for _ in range(3):
        train.optimizer_step(nn.functional.cross_entropy(model(x), y), opt, scheduler=sched)
    assert sched.last_epoch == 3
    assert opt.param_groups[0]["lr"] == pytest.approx(0.8 * 0.5**3)


# --------------------------------------------------------------------------- viz
def test_overlay_colours_ht_convention():
    img = np.full((4, 4), 0.5, np.float32)
    gt = np.zeros((4, 4), np.uint8)
    pred = np.zeros((4, 4), np.uint8)
    gt[0, 0] = 1  # GT only -> red
    pred[1, 1] = 1  # prediction only -> green
    gt[2, 2] = pred[2, 2] = 1  # both -> yellow
    rgb = viz.overlay(img, pred, gt, alpha=1.0)
    assert rgb.shape == (4, 4, 3)
    np.testing.assert_allclose(rgb[0, 0], [1, 0, 0])
    np.testing.assert_allclose(rgb[1, 1], [0, 1, 0])
    np.testing.assert_allclose(rgb[2, 2], [1, 1, 0])
    np.testing.assert_allclose(rgb[3, 3], [0.5, 0.5, 0.5])  # untouched background stays grey
    half = viz.overlay(img, torch.from_numpy(pred), torch.from_numpy(gt), alpha=0.5)
    np.testing.assert_allclose(half[0, 0], [0.75, 0.25, 0.25])
    with pytest.raises(ValueError, match="differs from image shape"):
        viz.overlay(img, pred[:2], gt)


def test_plots_return_figures():
    imgs = np.random.default_rng(0).random((5, 16, 16)).astype(np.float32)
    masks = (imgs > 0.7).astype(np.uint8)
    fig = viz.show_grid(imgs, titles=list("abcde"), ncols=3, masks=masks)
    assert len([a for a in fig.axes if a.images]) == 5
    fig2 = viz.show_overlays(imgs[:2], masks[:2], masks[::-1][:2], titles=["x", "y"])
    assert len(fig2.legends) == 1
    h = {"step_loss": [1.0, 0.8, 0.5, 0.4], "train_loss": [0.9, 0.45], "lr": [1, 1, 0.5, 0.1], "val_dice": [0.3, 0.6]}
    fig3 = viz.plot_history(h)
    assert len(fig3.axes) == 3
    fig4 = viz.plot_curves({"a": [0.1, 0.2], "b": {1: 0.3, 4: 0.5}, "c": ([1, 2], [0.2, 0.1])},
                           errors={"a": [0.01, 0.02]}, logx=True)
    assert len(fig4.axes[0].lines) == 3
    # (N, C, H, W) tensors are displayed channel-last
    fig5 = viz.show_grid(torch.rand(2, 3, 8, 8))
    assert fig5.axes[0].images[0].get_array().shape == (8, 8, 3)
    with pytest.raises(ValueError, match="0 images"):
        viz.show_grid([])
    with pytest.raises(ValueError, match="step_loss"):
        viz.plot_history({})
    plt.close("all")


def test_smooth_is_moving_average():
    y = np.array([0.0, 2.0, 4.0, 6.0])
    np.testing.assert_allclose(viz._smooth(y, 2), [0.0, 1.0, 3.0, 5.0])
    assert math.isclose(viz._smooth(y, 1)[2], 4.0)


# --------------------------------------------------------------------------- fit: step mode and hooks
def test_fit_step_mode_with_forward_and_after_step():
    torch.manual_seed(0)
    m = nn.Linear(2, 1)
    x = torch.randn(64, 2)
    y = x @ torch.tensor([[1.0], [-2.0]])
    seen = []

    def draw(step):
        i = torch.arange(step * 8, step * 8 + 8) % 64
        return x[i], y[i]

    def forward(model, batch):
        xb, yb = batch
        loss = ((model(xb) - yb) ** 2).mean()
        return loss, {"mse": loss.detach()}

    h = train.fit(m, draw, forward=forward, steps=120, lr=0.05, progress=False,
                  after_step=lambda step, model, opt: seen.append(step))
    assert h["steps"] == 120 and seen == list(range(120)) and len(h["logs"]) == 120
    assert h["step_loss"][-1] < 0.05 * h["step_loss"][0]


def test_fit_cycles_a_loader_for_steps_and_checks_budget():
    m = nn.Linear(2, 1)
    loader = [(torch.randn(4, 2), torch.randn(4, 1)) for _ in range(3)]
    h = train.fit(m, loader, nn.functional.mse_loss, steps=7, lr=0.01, progress=False)
    assert h["steps"] == 7
    with pytest.raises(ValueError, match="exactly one of epochs= and steps="):
        train.fit(m, loader, nn.functional.mse_loss, epochs=1, steps=3, lr=0.01)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        train.fit(m, loader, nn.functional.mse_loss, steps=0, lr=0.01)
    with pytest.raises(ValueError, match="needs steps"):
        train.fit(m, lambda t: loader[0], nn.functional.mse_loss, epochs=1, lr=0.01)


def test_predict_batches_and_restores_mode():
    m = nn.Sequential(nn.Linear(3, 2), nn.Dropout(0.5))
    m.train()
    x = torch.randn(10, 3)
    out = train.predict(m, x, batch_size=3)
    assert out.shape == (10, 2) and m.training
    m.eval()
    assert torch.allclose(out, m(x))
    with pytest.raises(ValueError, match="empty"):
        train.predict(m, x[:0])
