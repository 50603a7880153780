"""README.md's "New tasks" example runs as written."""

import re
import subprocess
import sys

from tests.conftest import REPO


def test_new_tasks_example_runs_as_written(tmp_path):
    readme = open(f"{REPO}/README.md").read()
    section = readme[readme.index("## New tasks"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = code.replace("/tmp/denoiser", str(tmp_path / "denoiser"))  # the only change: a fresh folder
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    error = float(re.search(r"reconstruction error ([\d.]+)", result.stdout).group(1))
    assert error < 0.3  # the variance of uniform [-1, 1] pixels is 1/3: it learned something
    assert (tmp_path / "denoiser" / "ckpt-24.index").exists()
