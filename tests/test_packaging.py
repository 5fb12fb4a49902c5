"""The set-up a newcomer follows is consistent: conda and pip name the same packages, and CI runs
exactly the test command the README gives."""
import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge spells some packages differently


def _name(spec):
    return re.split(r"[<>=!~ \[]", spec.strip(), maxsplit=1)[0].lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip = {_name(s) for s in project["dependencies"] + project["optional-dependencies"]["dev"]}
    conda, section = set(), None
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if re.match(r"\w", line):
            section = line.split(":")[0]
        m = re.match(r"  (?:    )?- ([A-Za-z][\w.-]*)", line)
        if section == "dependencies" and m and m.group(1) not in ("python", "pip"):
            conda.add(CONDA_NAMES.get(m.group(1).lower(), m.group(1).lower()))
    assert pip == conda, f"only in pyproject: {pip - conda}; only in environment.yml: {conda - pip}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    m = re.search(r"<!-- test-command -->\s*```(?:bash|sh)?\s*\n(.+?)\n```", readme, re.S)
    assert m, "README must mark its test command with <!-- test-command -->"
    command = m.group(1).strip()
    last = [l.strip() for l in ci.splitlines() if l.strip() and not l.strip().startswith("#")][-1]
    assert last == command or last.endswith(command), (last, command)
