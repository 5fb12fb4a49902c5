"""README's examples run as written."""
import re

from rdprune.util import REPO


def block_after(heading: str) -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_bring_your_own_model_example_runs(capsys):
    code = block_after("## Bring your own model")
    assert "torchvision.models.resnet18" in code and "rp.prune(" in code
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # our own README
    record = scope["record"]
    assert record["flops_reduction"] >= 0.5 - 1e-6 and record["method"] == "rd"
    assert capsys.readouterr().out.strip()
