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


def _imports(path: Path, modules: set) -> set:
    """match_ros modules a file imports (anywhere in it, function-level imports included)."""
    import ast

    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("match_ros"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("match_ros"))
    return out & modules


def test_no_import_cycles_and_layers_point_one_way():
    """No module imports (even inside a function) one that imports it back, directly or around a cycle; the core
    imports nothing above it; ros/ imports no node."""
    files = {}
    for path in (REPO / "match_ros").rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        files[name[:-9] if name.endswith(".__init__") else name] = path
    graph = {name: _imports(path, set(files)) - {name} for name, path in files.items()}
    cycles, state = [], {}

    def visit(u, stack):
        state[u] = "open"
        for v in sorted(graph[u]):
            if state.get(v) == "open":
                cycles.append(stack[stack.index(v):] + [u, v] if v in stack else [u, v])
            elif v not in state:
                visit(v, stack + [u])
        state[u] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert not cycles, cycles
    up = {n: sorted(d for d in deps if not d.startswith("match_ros.core") and d != "match_ros")
          for n, deps in graph.items() if n.startswith("match_ros.core")}
    assert not any(up.values()), {n: d for n, d in up.items() if d}
    assert not any(d.startswith("match_ros.nodes") for n, deps in graph.items() if n.startswith("match_ros.ros")
                   for d in deps)
    # the runtime (core, ros glue, nodes) never imports the tooling
    tooling = ("match_ros.tools", "match_ros.evaluation", "match_ros.training", "match_ros.sim")
    runtime = ("match_ros.core", "match_ros.ros", "match_ros.nodes")
    assert not {n: sorted(d for d in deps if d.startswith(tooling)) for n, deps in graph.items()
                if n.startswith(runtime) and any(d.startswith(tooling) for d in deps)}


def test_no_private_names_imported_across_modules():
    import ast

    found = []
    for path in (REPO / "match_ros").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("match_ros"):
                found += [f"{path.relative_to(REPO)}: {a.name}" for a in node.names if a.name.startswith("_")]
    assert not found, found


def test_the_tools_take_their_defaults_from_one_place():
    """The default matcher and keypoint count are stated once (match_ros.core.features: DEFAULT_MATCHER,
    DEFAULT_MAX_KEYPOINTS) and read by the node specs and every command-line tool: no tool defaults to another
    backend than the nodes (before: two tools defaulted to orb_teblid, and about ten repeated 1024)."""
    import re

    from match_ros.core.features import DEFAULT_MATCHER, DEFAULT_MAX_KEYPOINTS
    from match_ros.ros.matcher_params import matcher_spec

    spec = matcher_spec()
    assert spec["matcher"].default == DEFAULT_MATCHER and spec["max_keypoints"].default == DEFAULT_MAX_KEYPOINTS
    literal = re.compile(r'"--matcher",[^)]*default="|"--max-keypoints",[^)]*default=\d|max_keypoints=\d\d|'
                         r'get\("max_keypoints", [1-9]')
    found = [f"{p.relative_to(REPO)}:{i + 1}" for p in sorted((REPO / "match_ros").rglob("*.py"))
             for i, line in enumerate(p.read_text().splitlines()) if literal.search(line)]
    assert not found, found
