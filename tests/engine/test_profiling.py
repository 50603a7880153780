"""engine/profiling.py: op self time by type from a profiler trace (XSpace)."""

import pytest
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from engine import profiling


def _trace(path, planes):
    """Writes an XSpace; planes: {name: [(line_timestamp_ns, [(event name, offset_ps, duration_ps), ...]), ...]}."""
    space = xplane_pb2.XSpace()
    for plane_name, lines in planes.items():
        plane = space.planes.add(name=plane_name)
        ids = {}
        for timestamp_ns, events in lines:
            line = plane.lines.add(timestamp_ns=timestamp_ns)
            for name, offset, duration in events:
                if name not in ids:
                    ids[name] = len(ids) + 1
                    plane.event_metadata[ids[name]].id = ids[name]
                    plane.event_metadata[ids[name]].name = name
                line.events.add(metadata_id=ids[name], offset_ps=offset, duration_ps=duration)
    path.write_bytes(space.SerializeToString())
    return str(path)


def test_self_time_excludes_nested_ops_and_ignores_executor_events_and_other_planes(tmp_path):
    us = 10**6  # ps
    path = _trace(tmp_path / "host.xplane.pb", {
        "/host:CPU": [
            (0, [("ExecutorState::Process", 0, 100 * us),  # bookkeeping around the ops: not an op
                 ("fn:PartitionedCall", 0, 100 * us),
                 ("fn/a:Conv2D", 10 * us, 40 * us),
                 ("fn/a/inner:Relu", 20 * us, 5 * us),   # nested two deep
                 ("fn/b:MatMul", 60 * us, 20 * us),
                 ("late:Conv2D", 150 * us, 10 * us)]),
            (1000, [("c:Conv2D", 0, 30 * us)])],          # a second thread starting 1 us later
        "/device:GPU:0": [(0, [("gpu:Conv2D", 0, 10**9 * us)])]})
    s = profiling.summarize(path)
    got = {t.op_type: (round(t.seconds / 1e-6, 6), t.count) for t in s.by_type}
    assert got == {"PartitionedCall": (40, 1), "Conv2D": (35 + 10 + 30, 3), "MatMul": (20, 1), "Relu": (5, 1)}
    assert s.op_seconds == pytest.approx(140e-6)  # each thread's busy time: 100 + 10 and 30
    assert s.span_seconds == pytest.approx(160e-6)  # 0 to 160 us; the second thread ends at 31 us
    assert [t.op_type for t in s.by_type][0] == "Conv2D"
    table = s.table(top=2, steps=5)
    assert "(5 steps)" in table and "(2 other types)" in table
    assert [line.split()[-2] for line in table.splitlines()[2:]] == ["53.6%", "28.6%", "17.9%"]  # 75, 40, 25 of 140


def test_a_directory_without_a_trace_and_a_file_that_is_not_one_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        profiling.summarize(str(tmp_path))
    bad = tmp_path / "x.xplane.pb"
    bad.write_bytes(b"\xff\xff not a protobuf")
    with pytest.raises(ValueError, match="x.xplane.pb"):
        profiling.summarize(str(tmp_path))
    empty = _trace(tmp_path / "y.xplane.pb", {"/host:CPU": [(0, [("ThreadpoolListener::Record", 0, 5)])]})
    with pytest.raises(ValueError, match="holds no TensorFlow op"):
        profiling.summarize(empty)


def test_compare_lists_per_step_times_largest_difference_first(tmp_path):
    ms = 10**9  # ps
    a = profiling.summarize(_trace(tmp_path / "a.xplane.pb", {"/host:CPU": [(0, [
        ("x:Conv2D", 0, 40 * ms), ("y:All", 40 * ms, 6 * ms), ("z:Mul", 46 * ms, 4 * ms)])]}))
    b = profiling.summarize(_trace(tmp_path / "b.xplane.pb", {"/host:CPU": [(0, [
        ("x:Conv2D", 0, 42 * ms), ("z:Mul", 42 * ms, 4 * ms)])]}))
    text = profiling.compare(a, b, steps=2, names=("trainer", "hand loop"))
    lines = text.splitlines()
    assert lines[0].startswith("profile, ms per step (2 steps each): span trainer 25.00, hand loop 23.00")
    rows = [line.split() for line in lines[2:]]
    # All is only in a (+3 ms per step), Conv2D 1 ms per step less in a, Mul equal.
    assert rows == [["All", "3.000", "0.000", "+3.000"], ["Conv2D", "20.000", "21.000", "-1.000"],
                    ["Mul", "2.000", "2.000", "+0.000"]]
