"""Runtime: profiles, device, seeds, caches, data folders and hub reachability.

Every notebook starts with::

    from course_lib import runtime
    P = runtime.setup()          # picks the profile, seeds everything, prints summary()

and then takes *every* size it needs from ``P`` (``P.image_size``, ``P.epochs``,
``P.section("hybrid_tuning").steps`` ...). Two profiles exist (see DESIGN.md):

``quick``
    CPU-friendly: small images, few samples/epochs, the course-built tiny
    backbone and the SonoSynth data world. CI runs this.
``full``
    A CUDA GPU, real pretrained backbones, real datasets, paper-like sizes.

Choice: explicit name > ``COURSE_PROFILE`` > ``CI`` set (-> quick) > CUDA present
(-> full) > quick.

Method modules register their own sizes with :func:`register_section` so that a
notebook never hard-codes a number and each module owns its settings.
"""
from __future__ import annotations

import os
import platform
import random
import socket
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

PROFILE_NAMES = ("quick", "full")
#: largest square image side a profile may ask for (a 2048 px batch of 64 RGB images is already 3 GiB)
MAX_IMAGE_SIZE = 2048
#: accepted values of COURSE_DEVICE
DEVICE_CHOICES = ("cpu", "cuda", "cuda:N", "mps")

#: package root and repository root (when running from a checkout)
PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent


# --------------------------------------------------------------------------- profiles
@dataclass(frozen=True)
class Profile:
    """Every size a notebook needs. Frozen: use :meth:`with_` to derive a variant."""

    name: str
    image_size: int  # SonoSynth / real images fed to small models (pixels, square)
    clip_image_size: int  # image size for the CLIP backbone in use
    backbone: str  # default vision-language backbone name for load_backbone
    n_train: int  # training samples per experiment
    n_val: int
    n_test: int
    epochs: int
    batch_size: int
    lr: float
    shots: tuple[int, ...]  # few-shot settings swept by notebooks
    seeds: tuple[int, ...]  # seeds for mean +- std
    num_workers: int
    pin_memory: bool
    max_real: int  # cap on real images loaded per dataset (0 = no cap)
    threads: int = 1  # torch CPU threads fixed by setup() (0 = leave torch's default); COURSE_THREADS overrides
    smoke: bool = False  # COURSE_SMOKE=1: the profile's code paths and input sizes, with quick-profile counts
    seed: int = 0
    _sections: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        def positive_int(name, lo=1, hi=None):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
                rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
                raise ValueError(f"profile {self.name!r}: {name} must be an integer {rng}, got {v!r}; "
                                 f"e.g. P.with_({name}={_BASE['quick'].get(name, lo)})")

        for name, hi in (("image_size", MAX_IMAGE_SIZE), ("clip_image_size", MAX_IMAGE_SIZE), ("n_train", None),
                         ("n_val", None), ("n_test", None), ("epochs", 10_000), ("batch_size", 65_536)):
            positive_int(name, 8 if "image" in name else 1, hi)
        positive_int("num_workers", 0, 256)
        positive_int("max_real", 0)
        positive_int("threads", 0, 1024)
        if not (isinstance(self.lr, (int, float)) and not isinstance(self.lr, bool) and 0 < self.lr < 10):
            raise ValueError(f"profile {self.name!r}: lr must be a number in (0, 10), got {self.lr!r}")
        if not self.seeds or not all(isinstance(s, (int, np.integer)) and s >= 0 for s in self.seeds):
            raise ValueError(f"profile {self.name!r}: seeds must be a non-empty tuple of integers >= 0, got {self.seeds!r}")
        if not self.shots or not all(isinstance(k, (int, np.integer)) and k >= 1 for k in self.shots):
            raise ValueError(f"profile {self.name!r}: shots must be a non-empty tuple of integers >= 1, got {self.shots!r}")

    def section(self, name: str) -> SimpleNamespace:
        """Sizes registered by a method module under ``name`` for this profile."""
        if name not in _SECTIONS:
            known = ", ".join(sorted(_SECTIONS)) or "none yet"
            raise KeyError(
                f"no profile section {name!r} is registered (known: {known}). "
                f"Import the module that defines it (it calls runtime.register_section) first."
            )
        values = _SECTIONS[name][self.name]
        if self.smoke:
            values = {**smoke_values(_SECTIONS[name]["quick"], values), **_SECTIONS[name].get("smoke", {})}
        return SimpleNamespace(**values)

    def with_(self, **changes: Any) -> "Profile":
        """A copy with some sizes changed, e.g. ``P.with_(epochs=1)`` for a test."""
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}


_BASE = {
    "quick": dict(
        image_size=64,
        clip_image_size=64,
        backbone="sonoclip-tiny",
        n_train=512,
        n_val=128,
        n_test=256,
        epochs=3,
        batch_size=64,
        lr=1e-3,
        shots=(1, 2, 4, 8, 16),
        seeds=(0, 1, 2),
        num_workers=0,
        pin_memory=False,
        max_real=160,
        threads=1,
    ),
    "full": dict(
        image_size=224,
        clip_image_size=224,
        backbone="auto",
        n_train=8000,
        n_val=1000,
        n_test=2000,
        epochs=30,
        batch_size=64,
        lr=1e-4,
        shots=(1, 2, 4, 8, 16),
        seeds=(0, 1, 2, 3, 4),
        num_workers=4,
        pin_memory=True,
        max_real=0,
        threads=0,
    ),
}

_SECTIONS: dict[str, dict[str, dict]] = {}

#: in smoke mode these keys keep the profile's own value (shapes: what a GPU learner's code path depends on);
#: every other key (counts, steps, epochs, samples, seeds, shot lists) takes the quick profile's value, except
#: string values (model / encoder names, modes: they pick the code path), which also keep the profile's value
SMOKE_SHAPE_WORDS = ("image_size", "img_size", "resolution", "patch", "width", "depth", "rank", "dim", "backbone",
                     "heads", "channels", "features", "layers", "prompt_len", "experts", "encoder", "hidden",
                     "bottleneck", "d_red", "n_ctx", "reduction")
#: smoke mode's few-shot settings and real-image cap (per class). Consistent by construction: a k-shot draw
#: from BUSI's pool (half of ``SMOKE_MAX_REAL`` per class) leaves test images, even at the largest k
SMOKE_SHOTS = (1, 2, 4)
SMOKE_MAX_REAL = 16
#: smoke mode's sample counts (the profile fields n_train / n_val / n_test): images a notebook encodes with the
#: profile's backbone -- ViT-B/16 at 224 px costs about 0.1-0.3 s per image on one CPU core
SMOKE_SAMPLES = dict(n_train=32, n_val=16, n_test=32)


#: smoke mode caps the quick counts further where a key names them: real architectures at real sizes are 10-1000x
#: the quick profile's tiny models, so e.g. 30 quick steps of SAM 2 at 512 px would take many minutes on a CPU.
#: ``steps``/``epochs`` (ints) at most these values; ``seeds``: one seed (an int count -> 1, a tuple -> its first);
#: ``*views`` (augmented views re-encoded by the backbone) at most 1
SMOKE_MAX_STEPS = 4
SMOKE_MAX_EPOCHS = 2


def _keeps_profile_value(key: str, value) -> bool:
    return any(w in key for w in SMOKE_SHAPE_WORDS) or isinstance(value, str)


def _smoke_count(key: str, value):
    if isinstance(value, bool) or not isinstance(value, (int, tuple, list)):
        return value
    if key.endswith("seeds"):
        return min(value, 1) if isinstance(value, int) else type(value)(value[:1])
    if isinstance(value, int) and key.endswith("steps"):
        return min(value, SMOKE_MAX_STEPS)
    if isinstance(value, int) and key.endswith("epochs"):
        return min(value, SMOKE_MAX_EPOCHS)
    if isinstance(value, int) and key.endswith("views"):  # augmented views: each one re-encodes the few-shot pool
        return min(value, 1)
    return value


def smoke_values(quick: dict, full: dict) -> dict:
    """Full-profile shapes and code paths (see :data:`SMOKE_SHAPE_WORDS`) with quick-profile counts, steps,
    epochs and seeds capped (:data:`SMOKE_MAX_STEPS`, :data:`SMOKE_MAX_EPOCHS`, one seed)."""
    return {k: (v if _keeps_profile_value(k, v) else _smoke_count(k, quick.get(k, v))) for k, v in full.items()}


def smoke_mode() -> bool:
    """``COURSE_SMOKE=1``: run the (full) profile's code paths at their real input sizes with quick-profile
    counts, so a CPU executes every notebook in minutes (``make smoke-full``)."""
    v = os.environ.get("COURSE_SMOKE", "").strip().lower()
    if v not in ("", "0", "1", "true", "false", "yes", "no"):
        raise ValueError(f"COURSE_SMOKE must be 1 or 0, got {v!r}")
    return v in ("1", "true", "yes")


def register_section(name: str, *, quick: dict, full: dict, smoke: dict | None = None) -> None:
    """Declare the sizes a module needs, once per profile (same keys in both).

    Called at import time by method modules, e.g.::

        runtime.register_section("universeg", quick=dict(steps=300), full=dict(steps=20000))

    ``smoke`` (optional, a subset of the keys): counts for smoke mode (``COURSE_SMOKE=1``) that replace the
    automatic ones of :func:`smoke_values`, for sections whose real-size models make even the quick counts too
    slow or too large on a CPU. Only counts belong here: shapes and code paths always stay the profile's.
    """
    if set(quick) != set(full):
        raise ValueError(
            f"profile section {name!r}: quick and full must define the same keys; "
            f"only in quick: {sorted(set(quick) - set(full))}, only in full: {sorted(set(full) - set(quick))}"
        )
    smoke = dict(smoke or {})
    if set(smoke) - set(full):
        raise ValueError(f"profile section {name!r}: smoke overrides unknown keys {sorted(set(smoke) - set(full))}")
    shapes = sorted(k for k in smoke if _keeps_profile_value(k, full[k]))
    if shapes:
        raise ValueError(f"profile section {name!r}: smoke may only override counts, not shapes or code paths {shapes}")
    _SECTIONS[name] = {"quick": dict(quick), "full": dict(full), "smoke": smoke}


def profile_name_from_env() -> str:
    env = os.environ.get("COURSE_PROFILE", "").strip().lower()
    if env:
        return env
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return "quick"
    return "full" if _cuda_available() else "quick"


def get_profile(name: str | None = None) -> Profile:
    """Return the active :class:`Profile` (see module docstring for the rules)."""
    from_env = name is None
    if name is not None and not isinstance(name, str):
        raise TypeError(f"profile name must be a string ('quick' or 'full'), got {type(name).__name__}")
    name = (name or profile_name_from_env()).strip().lower()
    if name not in PROFILE_NAMES:
        where = f"COURSE_PROFILE={os.environ.get('COURSE_PROFILE')!r}" if from_env else f"name={name!r}"
        raise ValueError(
            f"unknown profile {name!r} (from {where}): choose one of {PROFILE_NAMES} "
            f"(set COURSE_PROFILE=quick or COURSE_PROFILE=full, or pass name=...)"
        )
    base = dict(_BASE[name])
    env_threads = os.environ.get("COURSE_THREADS", "").strip()
    if env_threads:
        try:
            base["threads"] = int(env_threads)
        except ValueError:
            raise ValueError(f"COURSE_THREADS must be an integer >= 0 (0 = torch's default), got {env_threads!r}") from None
        if base["threads"] < 0:
            raise ValueError(f"COURSE_THREADS must be an integer >= 0 (0 = torch's default), got {env_threads!r}")
    if smoke_mode():
        shapes = {k: v for k, v in base.items() if _keeps_profile_value(k, v)}
        base = {**_BASE["quick"], **shapes, "smoke": True, "seeds": (0,), "max_real": SMOKE_MAX_REAL,
                "shots": SMOKE_SHOTS, "epochs": min(_BASE["quick"]["epochs"], SMOKE_MAX_EPOCHS), **SMOKE_SAMPLES,
                "threads": base["threads"]}
    return Profile(name=name, **base)


# --------------------------------------------------------------------------- device / AMP
def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing
        return False


def get_device(prefer: str | None = None):
    """Best available ``torch.device``: cuda, then mps, then cpu.

    ``prefer`` (or ``COURSE_DEVICE``) forces one; asking for an absent device raises.
    """
    import torch

    source = "prefer" if prefer else "COURSE_DEVICE"
    prefer = prefer or os.environ.get("COURSE_DEVICE", "").strip() or None
    if prefer:
        import re

        ok = isinstance(prefer, torch.device) or (
            isinstance(prefer, str) and re.fullmatch(r"cpu|mps|cuda(:\d+)?", prefer.strip().lower()))
        if not ok:
            raise ValueError(f"unknown device {prefer!r} (from {source}): use one of {DEVICE_CHOICES}, "
                             f"e.g. COURSE_DEVICE=cuda or COURSE_DEVICE=cpu, or unset COURSE_DEVICE to pick the best")
        dev = torch.device(prefer.strip().lower() if isinstance(prefer, str) else prefer)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                f"device {str(dev)!r} was requested ({source}) but CUDA is not available here; "
                f"unset COURSE_DEVICE or set COURSE_DEVICE=cpu"
            )
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RuntimeError(f"device {str(dev)!r} was requested ({source}) but only {torch.cuda.device_count()} "
                               f"GPU(s) exist; use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
        if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise RuntimeError(f"device 'mps' was requested ({source}) but MPS is not available; "
                               f"set COURSE_DEVICE=cpu or unset it")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def amp_dtype(device=None):
    """Mixed-precision dtype for ``device``: bf16 where supported, else fp16, None on CPU/MPS."""
    import torch

    device = torch.device(device) if device is not None else get_device()
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device):
    """``torch.autocast`` on CUDA with :func:`amp_dtype`; a no-op context elsewhere."""
    import torch

    device = torch.device(device)
    dtype = amp_dtype(device)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device):
    """A GradScaler that is enabled only when AMP runs in fp16 (bf16 needs none)."""
    import torch

    device = torch.device(device)
    enabled = amp_dtype(device) == torch.float16
    return torch.amp.GradScaler(device.type if device.type == "cuda" else "cpu", enabled=enabled)


def seed_everything(seed: int = 0, deterministic: bool = False) -> int:
    """Seed python, numpy and torch (all devices). Returns the seed."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import torch

        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
    except ImportError:  # pragma: no cover
        pass
    return seed


# --------------------------------------------------------------------------- folders
def cache_dir(*parts: str) -> Path:
    """``$COURSE_CACHE`` (default ``~/.cache/course_lib``), created, joined with ``parts``."""
    env = os.environ.get("COURSE_CACHE", "").strip()
    root = Path(env or Path.home() / ".cache" / "course_lib").expanduser()
    path = root.joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        src = f"COURSE_CACHE={env!r}" if env else "the default cache (~/.cache/course_lib; COURSE_CACHE unset)"
        raise PermissionError(
            f"cannot create the cache folder {path} ({e.strerror or e}); it comes from {src}. Set COURSE_CACHE to a "
            f"writable folder, e.g. export COURSE_CACHE=/tmp/course_cache") from None
    if not os.access(path, os.W_OK):
        src = f"COURSE_CACHE={env!r}" if env else "the default cache (~/.cache/course_lib; COURSE_CACHE unset)"
        raise PermissionError(f"the cache folder {path} is not writable (from {src}); set COURSE_CACHE to a writable "
                              f"folder, e.g. export COURSE_CACHE=/tmp/course_cache")
    return path


class DatasetNotFoundError(FileNotFoundError):
    """A real dataset folder is missing or empty; the message says where we looked and how to fix it."""


def data_roots(path: str | os.PathLike | None = None) -> list[Path]:
    """Candidate roots for real datasets, in priority order.

    An explicit ``path`` is the only candidate: a wrong path must fail loudly rather than
    silently load another copy.
    """
    if path is not None:
        return [Path(path).expanduser()]
    roots: list[Path] = []
    env = os.environ.get("COURSE_DATA_DIR")
    if env:
        roots.append(Path(env).expanduser())
    roots.append(REPO_DIR.parent / "shared" / "data")
    return roots


def find_data_dir(folder: str, path: str | os.PathLike | None = None) -> Path | None:
    """First existing, non-empty ``<root>/<folder>`` (or ``path`` itself if it is that folder).

    ``path`` may point either at the dataset folder itself or at a root holding it.
    """
    if path is not None:
        p = Path(path).expanduser()
        if p.is_dir() and p.name == folder and any(p.iterdir()):
            return p
    for root in data_roots(path):
        cand = root / folder
        if cand.is_dir() and any(cand.iterdir()):
            return cand
    return None


def require_data_dir(folder: str, dataset: str, url: str, path: str | os.PathLike | None = None) -> Path:
    """Like :func:`find_data_dir` but raises :class:`DatasetNotFoundError` that names the
    dataset, every place looked at, and where to download it."""
    found = find_data_dir(folder, path)
    if found is not None:
        return found
    looked = [str(r / folder) for r in data_roots(path)]
    if path is not None:
        looked.insert(0, str(Path(path).expanduser()))
    looked = list(dict.fromkeys(looked))
    raise DatasetNotFoundError(
        f"{dataset}: no non-empty folder '{folder}' found. Looked in: {', '.join(looked)}. "
        f"Download it from {url} and either pass its path, or set COURSE_DATA_DIR to the folder "
        f"that contains '{folder}/' (see data_cards/)."
    )


def real_data_required() -> bool:
    """CI sets ``COURSE_REQUIRE_REAL_DATA=1``: tests then fail instead of skipping."""
    return os.environ.get("COURSE_REQUIRE_REAL_DATA", "").strip() in ("1", "true", "yes")


def is_colab() -> bool:
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


# --------------------------------------------------------------------------- hub reachability
_HUB_CACHE: dict[str, bool] = {}


def offline_forced() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes")
        for v in ("HF_HUB_OFFLINE", "COURSE_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_reachable(host: str = "huggingface.co", port: int = 443, timeout: float = 1.5) -> bool:
    """Can we open a TCP connection to ``host``? Never blocks more than ``timeout`` + 0.2 s.

    Honours ``HF_HUB_OFFLINE`` / ``COURSE_OFFLINE`` (returns False at once). DNS lookups
    can hang longer than socket timeouts, so the probe runs in a daemon thread that we
    simply stop waiting for. Results are cached per process.
    """
    if offline_forced():
        return False
    key = f"{host}:{port}"
    if key in _HUB_CACHE:
        return _HUB_CACHE[key]
    result = {"ok": False}

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result["ok"] = True
        except OSError:
            result["ok"] = False

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.2)
    _HUB_CACHE[key] = bool(result["ok"]) and not t.is_alive()
    return _HUB_CACHE[key]


# --------------------------------------------------------------------------- summary
def summary(profile: Profile | None = None, print_: bool = True) -> str:
    """One short block: profile, device, versions, backbone and data sources."""
    import torch

    profile = profile or get_profile()
    dev = get_device()
    cuda = torch.version.cuda if torch.cuda.is_available() else "none"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-"
    amp = amp_dtype(dev)
    real = {
        name: ("found" if find_data_dir(name) is not None else "absent")
        for name in ("busi_gt", "busi_256", "hc18", "totalseg")
    }
    lines = [
        f"profile   : {profile.name}{' SMOKE (counts capped)' if profile.smoke else ''} (image {profile.image_size}px, {profile.epochs} epochs, "
        f"batch {profile.batch_size}, seeds {list(profile.seeds)}, torch threads {torch.get_num_threads()})",
        f"device    : {dev.type} ({gpu}), AMP {str(amp).replace('torch.', '') if amp else 'off'}",
        f"versions  : python {platform.python_version()}, torch {torch.__version__}, CUDA {cuda}",
        f"backbone  : {profile.backbone}",
        f"data      : SonoSynth (procedural); real: "
        + ", ".join(f"{k} {v}" for k, v in real.items()),
        f"hub       : {'offline (forced)' if offline_forced() else 'checked on demand'}; colab: {is_colab()}",
    ]
    text = "\n".join(lines)
    if print_:
        print(text)
    return text


def set_threads(n: int) -> int:
    """Fix torch's intra-op CPU threads to ``n`` (0 = leave torch's default); returns the number in use.

    Results of the quick profile do not depend on the box: reductions are summed in a thread-count
    dependent order, so the same seed can give (slightly) different numbers with 1 or 2 threads.
    """
    import torch

    if n:
        torch.set_num_threads(int(n))
    return torch.get_num_threads()


def setup(profile: str | None = None, seed: int = 0, quiet: bool = False) -> Profile:
    """Notebook entry point: pick the profile, fix the torch thread count (``P.threads``), seed
    everything, print the summary."""
    P = get_profile(profile)
    set_threads(P.threads)
    seed_everything(seed)
    if not quiet:
        summary(P)
    return P


class Timer:
    """``with Timer() as t: ...; t.seconds`` — wall time of a block."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        return False
