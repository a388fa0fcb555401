"""Checkpoints and files the library writes: safe formats, checksums and atomic writes, in one place.
Used by every course-built model (sonoclip-tiny, segfm-tiny, universeg-tiny, ...) and by the caches.

* **No pickle.** Weights are stored as ``safetensors`` (tensors + a string-to-string metadata
  header); anything else the model needs (its config, class names, training facts) goes into that
  header as JSON. Loading never unpickles, so a foreign or tampered file cannot run code.
* **Verified on every load.** :func:`save_state` records a SHA-256 of the tensor payload inside the
  header (``payload_sha256``); :func:`load_state` recomputes it for *every* file, not only the
  shipped default, so a byte flipped in a copy is refused. A whole-file SHA-256 can be checked too
  (``expected_sha256``, what the model cards record).
* **Atomic writes.** :func:`atomic_write` writes to a temporary file in the same folder and renames
  it into place, so an interrupted run never leaves a half-written checkpoint or cache entry.
* Errors (:class:`CheckpointError`) name the file, what is wrong and how to fix it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

#: header key holding the JSON metadata, and the one holding the payload checksum
META_KEY = "course_meta"
PAYLOAD_KEY = "payload_sha256"
FORMAT_KEY = "course_format"
FORMAT = "course_lib/1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted, foreign or of the wrong model."""


class ChecksumError(CheckpointError):
    """A file's SHA-256 differs from the recorded one."""


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``path``; on success rename it onto ``path``, on error remove it.

    >>> with atomic_write("out.json", "w") as f:   # doctest: +SKIP
    ...     f.write("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_save(path: str | os.PathLike, writer: Callable[[str], None]) -> None:
    """Call ``writer(tmp_path)`` (a library that insists on writing by file name), then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _payload_digest(tensors: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(-1).view(_byte_dtype()).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _byte_dtype():
    import torch

    return torch.uint8


def save_state(path: str | os.PathLike, tensors: dict, meta: dict | None = None) -> str:
    """Write ``tensors`` (name -> tensor) as safetensors with ``meta`` (JSON-able) and a payload checksum
    in the header, atomically. Returns the file's SHA-256 (deterministic for the same input)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    # one header key: safetensors writes several metadata keys in a random order (non-deterministic bytes)
    header = {META_KEY: json.dumps({FORMAT_KEY: FORMAT, PAYLOAD_KEY: _payload_digest(tensors), "meta": meta or {}},
                                   sort_keys=True, default=str)}
    atomic_save(path, lambda tmp: save_file(tensors, tmp, metadata=header))
    return sha256_file(path)


def read_meta(path: str | os.PathLike) -> dict:
    """The JSON metadata of a checkpoint written by :func:`save_state` (header only, no tensors)."""
    from safetensors import safe_open

    path = Path(path)
    _check_exists(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(_unreadable(path, e)) from None
    return _header(path, md).get("meta", {})


def _header(path: Path, md: dict) -> dict:
    try:
        return json.loads(md.get(META_KEY, "{}"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {path} has an unreadable metadata header ({e}); rebuild the file") from None


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist; check the path (no file is created or trained "
                                f"for an explicit path)")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path {path} is a folder; pass the .safetensors file inside it")


def _unreadable(path: Path, err: Exception) -> str:
    with open(path, "rb") as f:
        head = f.read(8)
    kind = "a pickle/torch.save file" if head[:2] in (b"\x80\x02", b"\x80\x04", b"\x80\x05") or head[:2] == b"PK" else \
        "not a safetensors file, or a truncated one"
    return (f"cannot read checkpoint {path}: it is {kind} ({type(err).__name__}: {err}). The course only loads "
            f"safetensors checkpoints it wrote itself (never pickles, which can run code); re-download or rebuild "
            f"the file (see its model card in data_cards/)")


def load_state(path: str | os.PathLike, expected_sha256: str | None = None,
               require_meta: bool = True) -> tuple[dict, dict]:
    """Read a checkpoint written by :func:`save_state`: ``(tensors, meta)``.

    Refuses (with :class:`CheckpointError`) a file that is not safetensors, is truncated, was not
    written by the course (``require_meta``), or whose payload checksum does not match; with
    ``expected_sha256`` also a file whose bytes differ from the recorded ones (:class:`ChecksumError`).
    """
    from safetensors import safe_open

    path = Path(path)
    _check_exists(path)
    if expected_sha256 is not None:
        got = sha256_file(path)
        if got != expected_sha256:
            raise ChecksumError(
                f"checkpoint {path} has SHA-256 {got}, expected {expected_sha256} (recorded in the library and its "
                f"model card). The file is corrupt or was replaced: restore it (git checkout -- {path.name}) or "
                f"rebuild it with the command in its model card")
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise CheckpointError(_unreadable(path, e)) from None
    head = _header(path, md)
    if require_meta and head.get(FORMAT_KEY) != FORMAT:
        raise CheckpointError(
            f"checkpoint {path} is a safetensors file but was not written by course_lib (no course_lib header); "
            f"load it with the library that wrote it, or save your model with course_lib.checkpoints.save_state")
    if PAYLOAD_KEY in head and _payload_digest(tensors) != head[PAYLOAD_KEY]:
        raise CheckpointError(
            f"checkpoint {path} is corrupted: its tensors do not match the checksum stored when it was written "
            f"(bytes changed on disk or in transfer). Restore or rebuild it (see its model card in data_cards/)")
    return tensors, head.get("meta", {})
