"""The repository's promises: README's two commands, CI runs the test one verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text)[:2]


def test_readme_starts_with_the_two_commands():
    app, tests = readme_commands()
    assert "requirements.txt" in app and "python app.py" in app
    assert "requirements-dev.txt" in tests and "pytest" in tests
    body = (ROOT / "README.md").read_text().split("---", 2)[2]  # after the Space front matter
    first_block = body.index("```bash")
    assert "```" not in body[:first_block]


def test_ci_runs_the_readme_test_command_verbatim():
    _, tests = readme_commands()
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci_lines


def test_torch_is_pinned_to_the_local_cpu_build():
    reqs = (ROOT / "requirements.txt").read_text().splitlines()
    assert "torch==2.13.0" in reqs
