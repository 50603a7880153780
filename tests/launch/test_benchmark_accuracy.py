import os
import re
import sys

import pytest

from launch.benchmark_accuracy import read_target
from tests.launch.cli import run


def test_recipes_state_their_targets():
    assert read_target("launch/cifar_85.flags") == (0.85, 10)
    assert read_target("launch/cifar_93.flags") == (0.93, 10)
    assert read_target("launch/cifar_94.flags") == (0.94, 15)
    assert read_target("launch/cifar_95.flags") == (0.95, 60)
    with pytest.raises(ValueError, match=r"--recipe=launch/cifar.flags has no '# target:"):
        read_target("launch/cifar.flags")


_PARSE_EVERY_RECIPE = """
import glob, sys
from absl import flags
from launch import flags as launch_flags
launch_flags.define_train_flags()
# What a recipe's header says to add (transfer.flags takes the user's saved backbone).
needs = {"launch/transfer.flags": ["--backbone=" + sys.argv[1] + "/backbone.keras"]}
for recipe in sorted(glob.glob("launch/*.flags")):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["train", "--flagfile=" + recipe, "--data_dir=" + sys.argv[1], "--model_dir=" + sys.argv[1] + "/m",
                 *needs.get(recipe, [])])
    config = launch_flags.config_from_flags()
    print(recipe, config.model.name, config.run.epochs)
"""


def test_every_recipe_parses_into_a_valid_config(tmp_path):
    result = run([sys.executable, "-c", _PARSE_EVERY_RECIPE, str(tmp_path)])
    assert result.returncode == 0, result.stderr[-3000:]
    parsed = dict(line.split(" ", 1) for line in result.stdout.strip().splitlines())
    import glob
    from tests.conftest import REPO

    assert sorted(parsed) == sorted(os.path.relpath(p, REPO) for p in glob.glob(f"{REPO}/launch/*.flags"))
    assert parsed["launch/cifar_93.flags"] == "airbench93 11.0" and parsed["launch/cifar_95.flags"] == "airbench95 15.0"
    assert parsed["launch/transfer.flags"] == "airbench93 20.0"


@pytest.mark.slow
def test_benchmark_accuracy_runs_a_recipe_and_judges_it(tiny_cifar, tmp_path):
    recipe = tmp_path / "tiny.flags"
    recipe.write_text("# target: 99% in 30 min\n--model=small_cnn\n--batch_size=32\n--epochs=2\n"
                      "--eval_every_epochs=2\n--steps_per_loop=5\n--best_metric=\n")
    result = run([sys.executable, "-m", "launch.benchmark_accuracy", f"--recipe={recipe}",
                  f"--data_dir={tiny_cifar}", f"--work_dir={tmp_path / 'w'}"])
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert re.match(r"  epoch 1: accuracy=[\d.]+ examples/s=\d+$", lines[1]), lines  # not evaluated
    epochs = [float(m.group(1)) for m in map(re.compile(r"  epoch 2: eval_accuracy=([\d.]+)").match, lines) if m]
    last = re.fullmatch(rf"{re.escape(str(recipe))}: accuracy=([\d.]+) wall=\d+s examples/s=\d+ "
                        r"target=99% in 30 min: (holds|misses)", lines[-1])
    assert last and epochs and float(last.group(1)) == pytest.approx(epochs[0], abs=1e-4), lines
    assert last.group(2) == "misses"  # random labels: nowhere near 99%
