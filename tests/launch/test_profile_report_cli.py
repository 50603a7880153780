"""launch.profile_report: the op table and FLOP rate of a trace, and its errors."""

import sys

from tests.engine.test_profiling import _trace
from tests.launch.cli import run


def test_report_prints_per_step_times_and_the_flop_rate_over_the_span(tmp_path):
    ms = 10**9  # ps
    (tmp_path / "run").mkdir()
    _trace(tmp_path / "run" / "host.xplane.pb",
           {"/host:CPU": [(0, [("a:Conv2D", 0, 300 * ms), ("b:Mul", 300 * ms, 100 * ms)])]})
    out = run([sys.executable, "-m", "launch.profile_report", f"--logdir={tmp_path}", "--steps=4",
               "--flop_per_step=5e9"])
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines()[2:4]}
    assert rows == {"Conv2D": ["75.00", "75.0%", "1"], "Mul": ["25.00", "25.0%", "1"]}
    assert out.stdout.splitlines()[-1].endswith("over 100.0 ms of op span: 50 GFLOP/s")  # 5e9 / 0.1 s


def test_no_trace_and_flop_without_steps_are_one_line_errors(tmp_path):
    out = run([sys.executable, "-m", "launch.profile_report", f"--logdir={tmp_path}"])
    assert out.returncode == 1 and f"no profiler trace (*.xplane.pb) under {tmp_path}" in out.stderr
    assert "Traceback" not in out.stderr
    out = run([sys.executable, "-m", "launch.profile_report", f"--logdir={tmp_path}", "--flop_per_step=1"])
    assert out.returncode == 1 and "--flop_per_step needs --steps" in out.stderr
