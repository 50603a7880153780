import pytest

from engine.schedules import piecewise_constant_by_epoch


def test_rate_changes_at_the_first_step_of_each_boundary_epoch():
    schedule = piecewise_constant_by_epoch(0.2, [30, 45], [0.1, 0.01], steps_per_epoch=10)
    rates = {step: float(schedule(step)) for step in (0, 299, 300, 449, 450, 10_000)}
    assert rates == pytest.approx({0: 0.2, 299: 0.2, 300: 0.02, 449: 0.02, 450: 0.002, 10_000: 0.002})


def test_fractional_epochs_fall_on_rounded_steps():
    schedule = piecewise_constant_by_epoch(0.1, [1.5, 2.25], [0.1, 0.01], steps_per_epoch=390)
    assert float(schedule(584)) == pytest.approx(0.1)  # 1.5 * 390 = 585
    assert float(schedule(585)) == pytest.approx(0.01)
    assert float(schedule(877)) == pytest.approx(0.01)  # 2.25 * 390 = 877.5 -> 878
    assert float(schedule(878)) == pytest.approx(0.001)


def test_no_boundaries_is_a_constant_rate():
    assert piecewise_constant_by_epoch(0.05, [], [], steps_per_epoch=10) == 0.05


@pytest.mark.parametrize("boundaries,multipliers,message", [
    ([30], [0.1, 0.01], "one multiplier per boundary"),
    ([45, 30], [0.1, 0.01], "positive and increasing"),
    ([0.01, 0.02], [0.1, 0.01], "distinct"),
])
def test_bad_boundaries_are_refused(boundaries, multipliers, message):
    with pytest.raises(ValueError, match=message):
        piecewise_constant_by_epoch(0.1, boundaries, multipliers, steps_per_epoch=10)


@pytest.mark.parametrize("warmup_epochs", [0, 2])
def test_cosine_warms_up_to_the_base_rate_and_ends_at_zero_on_the_last_step(warmup_epochs):
    from engine.schedules import build_schedule

    schedule = build_schedule("cosine", 0.4, steps_per_epoch=10, total_steps=100, warmup_epochs=warmup_epochs)
    warmup = warmup_epochs * 10
    assert float(schedule(warmup)) == pytest.approx(0.4)  # the peak, right after the warm-up
    if warmup:
        assert float(schedule(warmup // 2)) == pytest.approx(0.2)  # linear from 0
    middle = warmup + (100 - warmup) // 2
    assert float(schedule(middle)) == pytest.approx(0.2, abs=1e-6)  # half-way down the cosine
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-7)


def test_triangle_rises_linearly_to_the_peak_then_falls_to_zero_at_the_last_step():
    from engine.schedules import build_schedule

    schedule = build_schedule("triangle", 2.0, steps_per_epoch=10, total_steps=100, boundaries=(), multipliers=())
    rates = [float(schedule(step)) for step in range(101)]
    assert rates[0] == pytest.approx(0.4) and rates[20] == pytest.approx(2.0)  # 0.2 x peak, peak at 20%
    assert rates[10] == pytest.approx(1.2)  # half-way up
    assert rates[60] == pytest.approx(1.0) and rates[99] == pytest.approx(0.025) and rates[100] == 0.0
    assert all(a < b for a, b in zip(rates[:20], rates[1:21])) and all(a > b for a, b in zip(rates[20:], rates[21:]))
    with pytest.raises(ValueError, match="warmup_epochs does not apply to lr_schedule=triangle"):
        build_schedule("triangle", 2.0, steps_per_epoch=10, total_steps=100, boundaries=(), multipliers=(),
                       warmup_epochs=1)
