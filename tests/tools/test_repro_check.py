"""tools/repro_check.py: sanitising with the nbval rules, text extraction per cell, tolerance maths."""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import repro_check as rp  # noqa: E402


def test_sanitizers_come_from_the_nbval_file():
    rules = rp.load_sanitizers()
    assert len(rules) >= 5
    text = "trained in 12.3 s at 0x7f00aa, 45%|####      | 9/20 [00:01<00:02]"
    clean = rp.sanitize(text, rules)
    assert "12.3" not in clean and "0x7f00aa" not in clean and "45%" not in clean
    assert rp.sanitize("epoch 3 loss 0.512", rules) == "epoch 3 loss 0.512"  # numbers that matter stay


def test_cell_texts_keeps_stdout_and_text_results_not_stderr_or_images():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# title"),
        nbformat.v4.new_code_cell("x", outputs=[
            nbformat.v4.new_output("stream", name="stdout", text="dice 0.81\n"),
            nbformat.v4.new_output("stream", name="stderr", text="100%|####| 5/5 warning\n"),
            nbformat.v4.new_output("display_data", data={"image/png": "AAAA", "text/plain": "<Figure>"}),
            nbformat.v4.new_output("display_data", data={"text/markdown": "Dice **0.81**", "text/plain": "<Md>"}),
        ]),
    ]
    texts = rp.cell_texts(nb, rp.load_sanitizers())
    assert list(texts) == [1]
    assert texts[1] == "dice 0.81\n<Figure>Dice **0.81**"


def test_compare_text_exact_and_within_tolerance():
    same, dev, _ = rp.compare_text("acc 0.812\n", "acc 0.812\n", 0, 0)
    assert same and dev == 0
    same, dev, first = rp.compare_text("acc 0.812\n", "acc 0.815\n", 0, 0)
    assert not same and abs(dev - 0.003) < 1e-9 and "0.812" in first and "0.815" in first
    same, dev, _ = rp.compare_text("acc 0.812\n", "acc 0.815\n", 0.0, 0.005)
    assert same
    same, dev, _ = rp.compare_text("acc 0.812\n", "acc 0.815\n", 0.001, 0.0)  # 0.003 > 0.001 * 0.815
    assert not same


def test_compare_text_wording_change_is_never_tolerated():
    same, dev, _ = rp.compare_text("benign 3\n", "malignant 3\n", 1.0, 1.0)
    assert not same and dev == float("inf")


def test_check_executes_the_same_source_twice_and_reports_a_nondeterministic_cell(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import random\nprint('fixed', 1.5)"),
                nbformat.v4.new_code_cell("print('drawn', random.random())")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "nd.ipynb"
    nbformat.write(nb, path)
    r = rp.check(path, envs=({}, {}), rtol=0, atol=0, cell_timeout=60, notebook_cap=120, rules=rp.load_sanitizers())
    assert r["cells_compared"] == 2
    assert [d["cell"] for d in r["differing"]] == [1] and not r["ok"]


def test_timing_tagged_cells_compare_text_but_not_numbers():
    """Cells tagged ``timing`` report wall-clock measurements: their numbers are masked, their words are not."""
    def nb_with(text, tags):
        nb = nbformat.v4.new_notebook()
        cell = nbformat.v4.new_code_cell("x")
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
        cell.metadata["tags"] = tags
        nb.cells = [cell]
        return nb

    rules = rp.load_sanitizers()
    a, b = "speed-up per epoch: 32x, accuracy 0.71\n", "speed-up per epoch: 39x, accuracy 0.71\n"
    assert rp.cell_texts(nb_with(a, ["timing"]), rules) == rp.cell_texts(nb_with(b, ["timing"]), rules)
    assert rp.cell_texts(nb_with(a, []), rules) != rp.cell_texts(nb_with(b, []), rules)
    assert rp.cell_texts(nb_with(a, ["timing"]), rules) != rp.cell_texts(nb_with("slow-down: 32x\n", ["timing"]), rules)
