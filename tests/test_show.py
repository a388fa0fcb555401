"""course_lib.show: named regions of the library source, shown in notebooks (code shown = code run)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from course_lib import show

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"


def _notebook_regions():
    out = []
    for nb in sorted(NB_DIR.glob("*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        for c in cells:
            if c["cell_type"] != "code":
                continue
            src = "".join(c["source"])
            for call in re.findall(r"\bshow\(([^)]*)\)", src):
                for name in re.findall(r"""["']([a-z0-9\-]+)["']""", call):
                    out.append((nb.name, name))
    return out


def test_every_region_a_notebook_names_exists():
    known = set(show.regions())
    missing = [(nb, r) for nb, r in _notebook_regions() if r not in known]
    assert not missing, f"notebooks show regions that the library does not define: {missing}"


def test_notebooks_do_not_slice_library_source():
    for nb in sorted(NB_DIR.glob("*.ipynb")):
        text = nb.read_text(encoding="utf-8")
        assert "getsource" not in text, f"{nb.name} prints library code with inspect.getsource; use show('region')"


def test_region_text_is_the_file_text():
    for name in show.regions():
        path, a, b = re.match(r"(.*):(\d+)-(\d+)$", show.where(name)).groups()
        lines = (Path(show.PACKAGE_DIR).parent / path).read_text(encoding="utf-8").splitlines()[int(a) - 1:int(b)]
        assert [ln.strip() for ln in lines] == [ln.strip() for ln in show.source(name).splitlines()]


def test_show_renders_markdown_with_location():
    md = show.show("fit-loop")
    assert "course_lib/train.py:" in md.data and "def fit(" in md.data


def test_unknown_region_is_a_clear_error():
    with pytest.raises(KeyError, match="no region named 'nope'"):
        show.source("nope")
    with pytest.raises(ValueError, match="at least one region"):
        show.show()


def test_parser_rejects_bad_regions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("# region: a\nx = 1\n")
    with pytest.raises(show.RegionError, match="never closed"):
        show.parse_regions(f)
    f.write_text("# region: a\n# region: b\n# endregion\n# endregion\n")
    with pytest.raises(show.RegionError, match="inside region"):
        show.parse_regions(f)
    f.write_text("def _private():\n    # region: p\n    return 1\n    # endregion\n")
    with pytest.raises(show.RegionError, match="private"):
        show.parse_regions(f)
    f.write_text("class A:\n    def f(self):\n        # region: ok\n        return 1\n        # endregion\n")
    assert show.parse_regions(f)["ok"][2] == ["return 1"]
