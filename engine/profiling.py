"""Where a profiled step's time goes: TensorFlow op time by op type, read from a profiler trace.

The TensorFlow profiler (`tf.profiler.experimental.start/stop`, the Trainer's
`Profiler` hook, `--profile_steps`) writes an XSpace protobuf,
<logdir>/plugins/profile/<run>/<host>.xplane.pb, which TensorBoard's profile
plugin shows. This module reads the host plane of that file with TensorFlow's
own protobuf classes (no plugin needed) and sums each op's self time (its
duration less that of the ops nested in it) by op type, so that a terminal
can print where the time of the profiled steps went.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import os

from engine.errors import UserError


@dataclasses.dataclass(frozen=True)
class OpTypeTime:
    """Self time of one op type over the trace.

    Attributes:
      op_type: TensorFlow op type, e.g. "Conv2DBackpropFilter".
      seconds: summed self time over every thread (s).
      count: number of op executions.
    """

    op_type: str
    seconds: float
    count: int


@dataclasses.dataclass(frozen=True)
class ProfileSummary:
    """Op time of one profiler trace.

    Attributes:
      path: the .xplane.pb file read.
      span_seconds: wall time from the first op's start to the last op's end (s).
      op_seconds: summed self time of every op on every thread (s); above
        span_seconds when ops ran side by side on several inter-op threads.
      by_type: one entry per op type, most time first.
    """

    path: str
    span_seconds: float
    op_seconds: float
    by_type: tuple[OpTypeTime, ...]

    def table(self, top: int = 20, steps: int | None = None) -> str:
        """The `top` op types as text lines: type, ms (per step when `steps` is given), share, count."""
        per = f" per step ({steps} steps)" if steps else ""
        div = steps or 1
        lines = [f"profile {self.path}: ops span {self.span_seconds * 1e3 / div:.1f} ms{per}, "
                 f"op self time {self.op_seconds * 1e3 / div:.1f} ms{per} over all threads",
                 f"{'op type':<34} {'ms' + (' per step' if steps else ''):>14} {'share':>7} {'count':>8}"]
        for t in self.by_type[:top]:
            lines.append(f"{t.op_type:<34} {t.seconds * 1e3 / div:>14.2f} {t.seconds / self.op_seconds:>7.1%} "
                         f"{t.count:>8}")
        rest = self.by_type[top:]
        if rest:
            seconds = sum(t.seconds for t in rest)
            lines.append(f"{f'({len(rest)} other types)':<34} {seconds * 1e3 / div:>14.2f} "
                         f"{seconds / self.op_seconds:>7.1%} {sum(t.count for t in rest):>8}")
        return "\n".join(lines)


def newest_trace(logdir: str) -> str:
    """The most recently written .xplane.pb under `logdir` (searched recursively).

    Raises:
      FileNotFoundError: naming `logdir` when it holds no trace.
    """
    paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    if not paths:
        raise FileNotFoundError(f"no profiler trace (*.xplane.pb) under {logdir}; record one with "
                                "--profile_steps=start,stop")
    return max(paths, key=os.path.getmtime)


def _op_type(event_name: str) -> str | None:
    """"name:Type" -> "Type" for a TensorFlow op; None for the executor's own events ("A::B", ...)."""
    name, sep, op_type = event_name.rpartition(":")
    if not sep or not name or name.endswith(":") or not op_type or " " in op_type:
        return None
    return op_type


def summarize(path_or_logdir: str) -> ProfileSummary:
    """Sums op self time by op type over the host (CPU) plane of a trace.

    Args:
      path_or_logdir: an .xplane.pb file, or a directory searched for the newest.

    Returns:
      ProfileSummary.

    Raises:
      FileNotFoundError: no trace found.
      ValueError: the file is not an XSpace with a host plane holding ops.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # TensorFlow's own copy of the proto.

    path = path_or_logdir if os.path.isfile(path_or_logdir) else newest_trace(path_or_logdir)
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        try:
            space.ParseFromString(f.read())
        except Exception as e:  # protobuf's DecodeError
            raise UserError(f"{path} is not a profiler trace (XSpace): {e}") from None
    seconds, counts = collections.Counter(), collections.Counter()
    first, last = None, None
    for plane in space.planes:
        if not plane.name.startswith("/host:"):
            continue
        types = {k: _op_type(m.name) for k, m in plane.event_metadata.items()}
        for line in plane.lines:
            events = sorted(((e.offset_ps, e.duration_ps, types.get(e.metadata_id)) for e in line.events
                             if types.get(e.metadata_id)), key=lambda e: (e[0], -e[1]))
            stack: list[list] = []  # [end_ps, op_type, self_ps] of the ops still open on this thread
            for start, duration, op_type in events:
                while stack and stack[-1][0] <= start:
                    _, t, self_ps = stack.pop()
                    seconds[t] += self_ps * 1e-12
                if stack:
                    stack[-1][2] -= duration  # Nested: the parent's self time excludes it.
                stack.append([start + duration, op_type, duration])
                counts[op_type] += 1
                begin = line.timestamp_ns * 1000 + start
                first = begin if first is None else min(first, begin)
                last = begin + duration if last is None else max(last, begin + duration)
            for _, t, self_ps in stack:
                seconds[t] += self_ps * 1e-12
    if not counts:
        raise UserError(f"{path} holds no TensorFlow op on a host plane")
    by_type = tuple(sorted((OpTypeTime(t, max(s, 0.0), counts[t]) for t, s in seconds.items()),
                           key=lambda t: -t.seconds))
    return ProfileSummary(path, (last - first) * 1e-12, sum(t.seconds for t in by_type), by_type)


def compare(a: ProfileSummary, b: ProfileSummary, steps: int, *, names: tuple[str, str] = ("a", "b"),
            top: int = 15) -> str:
    """Op self time per step of two traces side by side, the largest difference first.

    Args:
      a, b: summaries of two runs of `steps` steps each (e.g. the Trainer and a hand loop).
      steps: steps in each trace, > 0.
      names: column names of a and b.
      top: op types to list.

    Returns:
      Text: a line of spans and op time per step (ms), a header, then one line per
      op type: ms per step in a, in b, and a - b.
    """
    ta = {t.op_type: t.seconds for t in a.by_type}
    tb = {t.op_type: t.seconds for t in b.by_type}
    rows = sorted(set(ta) | set(tb), key=lambda k: (-abs(ta.get(k, 0.0) - tb.get(k, 0.0)), k))
    ms = 1e3 / steps
    lines = [f"profile, ms per step ({steps} steps each): span {names[0]} {a.span_seconds * ms:.2f}, "
             f"{names[1]} {b.span_seconds * ms:.2f}; op self time over all threads {names[0]} "
             f"{a.op_seconds * ms:.2f}, {names[1]} {b.op_seconds * ms:.2f}",
             f"  {'op type':34s} {names[0]:>10s} {names[1]:>10s} {'diff':>9s}"]
    for k in rows[:top]:
        x, y = ta.get(k, 0.0) * ms, tb.get(k, 0.0) * ms
        lines.append(f"  {k:34s} {x:10.3f} {y:10.3f} {x - y:+9.3f}")
    return "\n".join(lines)
