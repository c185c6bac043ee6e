"""README stays true: its quantizer example runs, and every page it links exists."""

from __future__ import annotations

import re

from conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_the_quantizer_example_runs():
    section = README.split("## The quantizer as a layer", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)[1]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    out, z_e = scope["out"], scope["z_e"]
    assert out.z_q.shape == z_e.shape == scope["z_q"].shape and out.indices.shape == (2, 8, 8)
    assert scope["codes"].equal(scope["vq"].eval().quantize(z_e))


def test_every_linked_page_and_picture_exists():
    links = re.findall(r"\]\(((?:docs|\.\.)/[^)#]+|[^):#]+\.md)(?:#[^)]*)?\)", README)
    assert links
    for link in links:
        assert (ROOT / link).exists(), link
