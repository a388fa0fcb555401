"""Show library code in a notebook: named regions of the source, rendered highlighted.

Used by every notebook that teaches a method's core lines. A region is marked in the library
source with two comment lines::

    # region: coop-forward
    ...the lines a learner should read...
    # endregion

and a notebook shows it with ``show("coop-forward")``. The text shown is read from the module
file that the running code was imported from, so what a learner reads is exactly what runs; a
region that is renamed or removed makes :func:`show` raise (and ``tests/test_show.py`` checks that
every region a notebook names exists), so a lesson can never silently drift from the code.
Only public code is shown: a region may not sit inside a function or class whose name starts
with ``_``.
"""
from __future__ import annotations

import io
import re
import tokenize
from functools import lru_cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
_START = re.compile(r"^\s*# region: ([a-z0-9][a-z0-9\-]*)\s*$")
_END = re.compile(r"^\s*# endregion\s*$")
_DEF = re.compile(r"^(\s*)(?:async\s+)?(def|class)\s+([A-Za-z_][A-Za-z0-9_]*)")


class RegionError(KeyError):
    """A region is unknown, duplicated or badly nested."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


def _strip_common_indent(lines: list[str]) -> list[str]:
    widths = [len(ln) - len(ln.lstrip()) for ln in lines if ln.strip()]
    cut = min(widths) if widths else 0
    return [ln[cut:] if ln.strip() else "" for ln in lines]


def _enclosing_private(lines: list[str], start: int) -> str | None:
    """Name of a private def/class that encloses line ``start`` (by indentation), if any."""
    here = len(lines[start]) - len(lines[start].lstrip())
    for i in range(start - 1, -1, -1):
        m = _DEF.match(lines[i])
        if m and len(m.group(1)) < here:
            if m.group(3).startswith("_") and not m.group(3).startswith("__"):
                return m.group(3)
            here = len(m.group(1))
    return None


def parse_regions(path: str | Path) -> dict[str, tuple[int, int, list[str]]]:
    """``{name: (first_line, last_line, lines)}`` of the regions in one source file (1-based lines)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    # only real comment lines count (a region example inside a docstring is not a region)
    comment_lines = {tok.start[0] - 1 for tok in tokenize.generate_tokens(io.StringIO(text).readline)
                     if tok.type == tokenize.COMMENT and lines[tok.start[0] - 1].strip().startswith("#")}
    out: dict[str, tuple[int, int, list[str]]] = {}
    open_name, open_at = None, -1
    for i, ln in enumerate(lines):
        if i not in comment_lines:
            continue
        m = _START.match(ln)
        if m:
            if open_name is not None:
                raise RegionError(f"{path}:{i + 1}: region {m.group(1)!r} starts inside region {open_name!r}; "
                                  f"close the first with '# endregion'")
            open_name, open_at = m.group(1), i
            continue
        if _END.match(ln):
            if open_name is None:
                raise RegionError(f"{path}:{i + 1}: '# endregion' without a '# region: name' above it")
            if open_name in out:
                raise RegionError(f"{path}: region {open_name!r} is defined twice; region names must be unique")
            private = _enclosing_private(lines, open_at)
            if private:
                raise RegionError(f"{path}:{open_at + 1}: region {open_name!r} sits inside private {private!r}; "
                                  f"notebooks show public code only: make it public or move the region")
            out[open_name] = (open_at + 2, i, _strip_common_indent(lines[open_at + 1:i]))
            open_name = None
    if open_name is not None:
        raise RegionError(f"{path}:{open_at + 1}: region {open_name!r} is never closed with '# endregion'")
    return out


@lru_cache(maxsize=1)
def _index() -> dict[str, tuple[Path, int, int, tuple[str, ...]]]:
    found: dict[str, tuple[Path, int, int, tuple[str, ...]]] = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if "# region:" not in text:
            continue
        for name, (a, b, lines) in parse_regions(path).items():
            if name in found:
                raise RegionError(f"region {name!r} is defined in both {found[name][0]} and {path}; names must be unique")
            found[name] = (path, a, b, tuple(lines))
    return found


def regions() -> list[str]:
    """Every region name defined in ``course_lib``, sorted."""
    return sorted(_index())


def source(name: str) -> str:
    """The text of region ``name`` (common indentation removed)."""
    idx = _index()
    if name not in idx:
        close = [r for r in idx if name.split("-")[0] in r][:8]
        raise RegionError(f"no region named {name!r} in course_lib; known regions like it: {close or regions()[:8]}. "
                          f"Regions are marked in the library with '# region: {name}' ... '# endregion'")
    return "\n".join(idx[name][3])


def where(name: str) -> str:
    """``course_lib/…/file.py:first-last`` of region ``name``."""
    source(name)
    path, a, b, _ = _index()[name]
    return f"{path.relative_to(PACKAGE_DIR.parent)}:{a}-{b}"


def show(*names: str):
    """Display one or more regions, highlighted, each headed by the file and lines it comes from.

    Returns an ``IPython.display.Markdown`` object (rendered by Jupyter, readable as text elsewhere).
    """
    if not names:
        raise ValueError("show() needs at least one region name, e.g. show('coop-forward'); see regions()")
    from IPython.display import Markdown

    parts = [f"`{where(n)}`\n```python\n{source(n)}\n```" for n in names]
    return Markdown("\n\n".join(parts))
