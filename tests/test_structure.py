"""Structure checks: code outside the Trainer uses its public interface only (issue 28)."""

import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The Trainer and its mixins: the modules that may read its private fields.
TRAINER_MODULES = {f"engine/{name}.py" for name in ("trainer", "step", "update", "loops", "checkpoint",
                                                    "run_control", "hooks")}
# Names code uses for a Trainer it was handed.
TRAINER_NAMES = {"t", "trainer", "owner"}


def _private_reads(path: str) -> list[str]:
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
            continue
        value = node.value
        name = value.id if isinstance(value, ast.Name) else value.attr if isinstance(value, ast.Attribute) else None
        if name in TRAINER_NAMES:
            found.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}: {name}.{node.attr}")
    return found


def test_no_module_outside_the_trainer_reads_a_private_trainer_field():
    files = [p for folder in ("engine", "launch", "datasets", "models")
             for p in glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True)]
    outside = [p for p in files if os.path.relpath(p, ROOT) not in TRAINER_MODULES]
    assert len(outside) > 20  # The glob found the project.
    offenders = [hit for p in outside for hit in _private_reads(p)]
    assert not offenders, "read through the Trainer's public interface instead:\n" + "\n".join(offenders)


def test_the_check_finds_a_private_read(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f(trainer, t):\n    return trainer._stop, t._save(1), trainer.state.step, t.__class__\n")
    assert [hit.rsplit(": ", 1)[1] for hit in _private_reads(str(sample))] == ["trainer._stop", "t._save"]
