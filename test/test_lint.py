"""Lint as a test: flake8 over the package, tests, launch files and setup.py with the project's configuration
(setup.cfg: ament_flake8's rules with its documented deviations)."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_flake8_is_clean():
    r = subprocess.run([sys.executable, "-m", "flake8", "match_ros", "test", "launch", "setup.py"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_pep257_first_lines_of_public_modules():
    """Every module starts with a docstring whose first line says what it is (pep257 D100/D400 in spirit)."""
    missing = []
    for path in sorted((REPO / "match_ros").rglob("*.py")):
        text = path.read_text()
        if path.name == "__init__.py" and not text.strip():
            continue
        if not text.lstrip().startswith(('"""', "'''")):
            missing.append(str(path.relative_to(REPO)))
    assert not missing, missing
