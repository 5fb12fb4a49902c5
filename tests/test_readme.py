"""README's examples run as written (the quick start and the plug-ins; the API tour's first block
needs a trained checkpoint and is not run here)."""
import re

import rdprune as rp
from rdprune.lab import front
from rdprune.util import REPO


def block_after(heading: str) -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_quick_start_example_runs(capsys):
    code = block_after("## Quick start")
    assert "torchvision.models.resnet18" in code and "rp.prune(" in code
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # our own README
    record = scope["record"]
    assert record["flops_reduction"] >= 0.5 - 1e-6 and record["method"] == "rd"
    assert capsys.readouterr().out.strip()


def test_plug_in_example_runs():
    code = block_after("**Plug-ins.**")
    for name in ("register_allocator", "register_criterion", "register_distortion", "register_method"):
        assert name in code
    scope: dict = {}
    try:
        exec(compile(code, "README.md", "exec"), scope)  # our own README
        assert scope["record"]["method"] == "rd" and scope["record"]["params_reduction"] >= 0.5 - 1e-6
        assert "flat" in rp.methods() and "my_surgery" in rp.methods()
        assert set(scope["curves"].layer) == set(rp.masks.prunable(scope["net"]))
    finally:
        for name, drop in (("flat", rp.unregister_allocator), ("largest_first", rp.unregister_criterion),
                           ("mae", rp.rd.unregister_distortion)):
            try:
                drop(name)
            except ValueError:
                pass
        front._METHODS.pop("my_surgery", None)
