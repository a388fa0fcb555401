"""Checkers for the notebooks' exercises and check-your-understanding questions (every notebook).

A learner writes an answer and asks::

    from course_lib.exercises import check
    check("02.5", my_auc, reference=auc_descriptions)

and gets ✅ or ❌ with the reason, and a hint when it is wrong. Each notebook's checkers live in
``course_lib/exercises/nbNN.py`` and register themselves with :func:`exercise`; each registration
carries a *right* and a *wrong* example, so the test suite proves that every checker accepts a
correct answer and rejects a wrong one. Solutions live in the notebooks in cells tagged
``solution`` (collapsed; they end with ``assert check(...)``), so executing the notebook proves that
the model solution passes its checker.

:func:`quiz` renders short multiple-choice questions with immediate feedback (ipywidgets) and a
static fallback (the answer in a collapsed ``<details>`` block) for rendered or printed notebooks.
"""
from __future__ import annotations

import importlib
import math
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from course_lib import runtime


@dataclass
class Result:
    """The verdict of a checker: ``ok`` and a message (what was checked, and why)."""

    ok: bool
    message: str
    hint: str = ""

    def __bool__(self) -> bool:
        return bool(self.ok)

    def __str__(self) -> str:
        head = "✅ correct" if self.ok else "❌ not yet"
        tail = "" if self.ok or not self.hint else f"\n   hint: {self.hint}"
        return f"{head}: {self.message}{tail}"

    def _repr_markdown_(self) -> str:
        return str(self).replace("\n   hint:", "  \n*hint:*")


@dataclass
class Exercise:
    id: str
    title: str
    checker: Callable[..., Result]
    hint: str
    right: tuple = ()
    right_context: dict = field(default_factory=dict)
    wrong: tuple = ()
    wrong_context: dict = field(default_factory=dict)


_REGISTRY: dict[str, Exercise] = {}
_LOADED = False


def exercise(id: str, *, title: str, hint: str, right: tuple, wrong: tuple,
             right_context: dict | None = None, wrong_context: dict | None = None):
    """Register a checker ``f(answer..., **context) -> Result | bool | (bool, message)`` under ``id``
    (``"NN.k"``: notebook NN, exercise k). ``right``/``wrong`` are example answers (tuples of positional
    arguments) that the checker must accept/reject (tested)."""
    if not isinstance(id, str) or len(id.split(".")) != 2 or not all(p.isdigit() for p in id.split(".")):
        raise ValueError(f"exercise id must look like 'NN.k' (notebook, exercise number), got {id!r}")

    def deco(fn):
        if id in _REGISTRY:
            raise ValueError(f"exercise {id!r} is registered twice")
        _REGISTRY[id] = Exercise(id, title, fn, hint, tuple(right), dict(right_context or {}), tuple(wrong),
                                 dict(wrong_context or {}))
        return fn

    return deco


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    import course_lib.exercises as pkg

    for m in pkgutil.iter_modules(pkg.__path__):
        if m.name.startswith("nb"):
            importlib.import_module(f"{pkg.__name__}.{m.name}")
    _LOADED = True


def registered() -> dict[str, Exercise]:
    """Every registered exercise, by id."""
    _load_all()
    return dict(sorted(_REGISTRY.items(), key=lambda kv: tuple(int(p) for p in kv[0].split("."))))


def _as_result(out, ex: Exercise) -> Result:
    if isinstance(out, Result):
        if not out.hint:
            out.hint = ex.hint
        return out
    if isinstance(out, tuple) and len(out) == 2:
        return Result(bool(out[0]), str(out[1]), ex.hint)
    return Result(bool(out), "matches the expected answer" if out else "does not match the expected answer", ex.hint)


def run(id: str, *answer, **context) -> Result:
    """Run checker ``id`` quietly and return its :class:`Result`."""
    ex = registered().get(id)
    if ex is None:
        known = ", ".join(i for i in registered() if i.split(".")[0] == str(id).split(".")[0]) or "none"
        raise KeyError(f"no exercise {id!r}; exercises of this notebook: {known}")
    try:
        return _as_result(ex.checker(*answer, **context), ex)
    except (TypeError, ValueError) as e:  # an answer of the wrong kind is a wrong answer, explained
        return Result(False, f"the answer could not be checked: {e}", ex.hint)


def check(id: str, *answer, **context) -> Result:
    """Check an answer to exercise ``id`` and print the verdict (returned too, truthy when right)."""
    res = run(id, *answer, **context)
    print(f"[{id}] {res}")
    if not res and runtime.smoke_mode():
        # COURSE_SMOKE=1 runs the full profile's code paths with random weights, one seed and capped counts: the
        # numbers a checker compares mean nothing there, so a wrong verdict is reported but not asserted
        print(f"[{id}] smoke mode (COURSE_SMOKE=1): random weights and capped counts, verdict not asserted")
        return Result(True, f"smoke mode, not asserted: {res}")
    return res


# --------------------------------------------------------------------------- checker building blocks
def within(value, lo: float, hi: float, what: str) -> Result:
    """``lo <= value <= hi`` for a stochastic result, with the reason in the message."""
    v = float(value)
    if not math.isfinite(v):
        return Result(False, f"{what} is {v}, not a finite number")
    ok = lo <= v <= hi
    return Result(ok, f"{what} = {v:.4g} {'lies' if ok else 'does not lie'} in the expected range [{lo:g}, {hi:g}]")


def close(value, target: float, tol: float, what: str) -> Result:
    """``|value - target| <= tol``."""
    v = float(value)
    ok = math.isfinite(v) and abs(v - target) <= tol
    return Result(ok, f"{what} = {v:.4g}, expected {target:.4g} ± {tol:g}")


def same_choice(value, expected, what: str, options: Sequence[Any] | None = None) -> Result:
    """An exact (case-insensitive for strings) choice among ``options``."""
    norm = (lambda x: x.strip().lower()) if isinstance(expected, str) else (lambda x: x)
    if options is not None and norm(value) not in [norm(o) for o in options]:
        return Result(False, f"{what}: {value!r} is not one of {list(options)}")
    ok = norm(value) == norm(expected)
    return Result(ok, f"{what}: {value!r} is {'right' if ok else 'not the expected choice'}")


# --------------------------------------------------------------------------- understanding questions
@dataclass
class Question:
    """A multiple-choice question tied to a result the notebook just computed."""

    text: str
    options: Sequence[str]
    correct: int
    why: str

    def __post_init__(self):
        if not 0 <= self.correct < len(self.options):
            raise ValueError(f"correct must index one of the {len(self.options)} options, got {self.correct}")


def quiz(questions: Sequence[Question], title: str = "Check your understanding"):
    """Show ``questions`` with immediate feedback (ipywidgets); in a static view (rendered notebook,
    slides) the answers are in collapsed ``<details>`` blocks."""
    from IPython.display import HTML, display

    if not questions:
        raise ValueError("quiz() needs at least one Question")
    static = [f"<h4>{title}</h4>"]
    for i, q in enumerate(questions, 1):
        opts = "".join(f"<li>{o}</li>" for o in q.options)
        static.append(f"<p><b>Q{i}.</b> {q.text}</p><ol type='a'>{opts}</ol>"
                      f"<details><summary>answer</summary>({chr(97 + q.correct)}) {q.options[q.correct]} — {q.why}</details>")
    try:
        import ipywidgets as w
    except ImportError:  # pragma: no cover
        display(HTML("".join(static)))
        return None  # displayed already
    boxes = []
    for i, q in enumerate(questions, 1):
        radio = w.RadioButtons(options=list(q.options), value=None, layout=w.Layout(width="auto"))
        out = w.HTML()

        def on_change(change, q=q, out=out):
            if change["new"] is None:
                return
            right = q.options.index(change["new"]) == q.correct
            out.value = ("<span style='color:green'>✅ right</span> — " if right else
                         "<span style='color:#b00'>❌ not quite</span> — ") + q.why

        radio.observe(on_change, names="value")
        boxes.append(w.VBox([w.HTML(f"<b>Q{i}.</b> {q.text}"), radio, out]))
    box = w.VBox([w.HTML(f"<h4>{title}</h4>")] + boxes)
    # one output, two views: a live front end renders the widget; a static view (nbconvert, GitHub, the
    # slides) has no widget manager and falls back to the HTML with the answers collapsed
    bundle = dict(box._repr_mimebundle_() or {})
    bundle["text/html"] = "".join(static)
    bundle["text/plain"] = "\n".join(f"Q{i}. {q.text}" for i, q in enumerate(questions, 1))
    display(bundle, raw=True)
    return None  # displayed already: returning the box would show it a second time as the cell's value
