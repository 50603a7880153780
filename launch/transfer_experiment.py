"""Does transfer learning pay? Scratch, frozen backbone, and fine-tuning, against labels per class.

    python -m launch.transfer_experiment --data_dir=../shared/data/cifar10-bin --model_dir=/tmp/transfer

The TensorFlow tutorial "Transfer learning and fine-tuning" (a frozen pretrained
backbone with a new head, then its top layers fine-tuned at a tenth of the rate)
cannot run offline: neither its ImageNet weights nor its data can be had. This
experiment asks its question on CIFAR-10 instead, through the command line a
user would type:

1. Pretrain: `launch.train --flagfile=launch/cifar_93.flags --classes=0,1,2,3,4`
   (airbench93 on the 25,000 training images of classes 0-4), then
   `launch.export --output=<model_dir>/pretrained.keras`.
2. For each --labels_per_class of classes 5-9, three arms of
   `launch.train --flagfile=launch/transfer.flags`, with the same steps, global
   batch, schedule and augmentation:
   - scratch: `--backbone= --backbone_cut= --finetune_after_epochs=0`
     (the flag file's --model, airbench93, from random weights);
   - frozen: `--backbone=<pretrained.keras> --finetune_after_epochs=0`
     (the head alone trains, the backbone in inference mode);
   - finetune: `--backbone=<pretrained.keras>` with the switch at half the
     steps: the head trains, then the top --finetune_layers layers at
     --finetune_lr_factor x the rate.
   Each arm is tested on all 5,000 test images of classes 5-9.
3. Prints the table (also in <model_dir>/transfer.md and results.json) and draws
   test accuracy against labels per class into <model_dir>/transfer.png.

Every run has its own folder under --model_dir and its log beside it; a rerun
resumes each where it stopped and skips the finished ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_string("data_dir", "../shared/data/cifar10-bin", "CIFAR-10 folder (see launch.train).")
flags.DEFINE_string("model_dir", "/tmp/transfer_experiment", "Folder of every run, the table and the picture.")
flags.DEFINE_string("pretrain_flagfile", "launch/cifar_93.flags", "Recipe of the pretraining on classes 0-4.")
flags.DEFINE_string("flagfile_arms", "launch/transfer.flags", "Recipe of the three arms on classes 5-9.")
flags.DEFINE_list("labels_per_class", ["100", "500", "all"], "Rows of the table: training images per class of "
                  "classes 5-9 (all: the 5,000 of each).")
flags.DEFINE_integer("train_steps", 200, "Optimizer steps of every arm (fine-tuning starts at half of them).")
flags.DEFINE_integer("global_batch_size", 250, "Global batch of every arm (a row's images per class x 5 must "
                     "hold at least one batch).")
flags.DEFINE_integer("seed", 0, "Seed of the pretraining and of every arm (subset, weights, order, augmentation).")
flags.DEFINE_list("extra", [], "More launch.train flags for every arm, e.g. --extra=--tta=flip.")
FLAGS = flags.FLAGS

ARMS = ("scratch", "frozen", "finetune")
TRAIN_PER_CLASS = 5000  # CIFAR-10's training images per class


def _launch(module: str, args: list[str], log: str) -> float:
    """Runs `python -m module args`, its output into `log`; returns the seconds it took.

    Raises:
      SystemExit: naming the command and its log when it fails.
    """
    start = time.time()
    with open(log, "a") as out:
        out.write(f"\n$ python -m {module} {' '.join(args)}\n")
        out.flush()
        code = subprocess.call([sys.executable, "-m", module, *args], stdout=out, stderr=subprocess.STDOUT)
    if code != 0:
        sys.exit(f"launch.transfer_experiment: python -m {module} {' '.join(args)} failed with status {code}; "
                 f"see {log}")
    return time.time() - start


def _last_eval_accuracy(model_dir: str) -> float:
    """The last eval_accuracy in <model_dir>/history.json."""
    with open(os.path.join(model_dir, "history.json")) as f:
        rows = [row for row in json.load(f) if "eval_accuracy" in row]
    if not rows:
        sys.exit(f"launch.transfer_experiment: {model_dir}/history.json has no eval_accuracy")
    return float(rows[-1]["eval_accuracy"])


def arm_flags(arm: str, per_class: int | None, backbone: str, *, train_steps: int, global_batch: int) -> list[str]:
    """The launch.train flags of one arm after --flagfile=<the arms' recipe>.

    Args:
      arm: "scratch", "frozen" or "finetune".
      per_class: training images per class, or None for all.
      backbone: path of the pretrained .keras file.
      train_steps: optimizer steps of the arm.
      global_batch: global batch.

    Returns:
      Flags as strings; fine-tuning starts at train_steps // 2, given in epochs of
      the row's data (--finetune_after_epochs).

    Raises:
      ValueError: if the row's data holds less than one global batch.
    """
    images = 5 * (per_class or TRAIN_PER_CLASS)
    steps_per_epoch = images // global_batch
    if steps_per_epoch < 1:
        raise ValueError(f"--labels_per_class={per_class}: {images} images hold no global batch of {global_batch}")
    out = [f"--train_steps={train_steps}", f"--global_batch_size={global_batch}"]
    if per_class is not None:
        out.append(f"--labels_per_class={per_class}")
    if arm == "scratch":
        return out + ["--backbone=", "--backbone_cut=", "--finetune_after_epochs=0"]
    out.append(f"--backbone={backbone}")
    if arm == "frozen":
        return out + ["--finetune_after_epochs=0"]
    return out + [f"--finetune_after_epochs={train_steps // 2 / steps_per_epoch:.10g}"]


def _arm_accuracy(folder: str, arm: str) -> float:
    return _last_eval_accuracy(os.path.join(folder, "finetune") if arm == "finetune" else folder)


def draw(results: dict, path: str) -> None:
    """Test accuracy against labels per class, one line per arm, into `path` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    xs = [row["labels_per_class"] for row in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, style in zip(ARMS, ("o-", "s-", "^-")):
        ax.plot(xs, [100 * row[arm] for row in rows], style, label=arm)
    ax.set_xscale("log")
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("training labels per class (classes 5-9)")
    ax.set_ylabel("test accuracy, classes 5-9 (%)")
    ax.set_title(f"{results['train_steps']} steps of {results['global_batch_size']}; backbone: airbench93 on "
                 f"classes 0-4 ({100 * results['pretrain_accuracy']:.1f}%)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(results: dict) -> str:
    """The results as a Markdown table, with the goal's differences."""
    lines = ["| labels per class | scratch | frozen backbone + head | + fine-tuning | frozen - scratch | "
             "fine-tuning - scratch |", "|---|---|---|---|---|---|"]
    for row in results["rows"]:
        s, f, t = (100 * row[arm] for arm in ARMS)
        lines.append(f"| {row['labels_per_class']:,} | {s:.2f}% | {f:.2f}% | {t:.2f}% | {f - s:+.2f} | "
                     f"{t - s:+.2f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    root = os.path.abspath(FLAGS.model_dir)
    os.makedirs(root, exist_ok=True)
    data = os.path.abspath(FLAGS.data_dir)
    rows = []
    for text in FLAGS.labels_per_class:
        if text != "all" and not (text.isdigit() and 0 < int(text) <= TRAIN_PER_CLASS):
            sys.exit(f"launch.transfer_experiment: --labels_per_class: {text!r} is not 1..{TRAIN_PER_CLASS} or all")
        rows.append(None if text == "all" else int(text))
    times = {}

    pretrain = os.path.join(root, "pretrain")
    times["pretrain"] = _launch("launch.train", [f"--flagfile={FLAGS.pretrain_flagfile}", f"--data_dir={data}",
                                                 "--classes=0,1,2,3,4", f"--model_dir={pretrain}",
                                                 f"--seed={FLAGS.seed}", "--noprogress"],
                                os.path.join(root, "pretrain.log"))
    backbone = os.path.join(root, "pretrained.keras")
    if not os.path.exists(backbone):
        _launch("launch.export", [f"--model_dir={pretrain}", f"--output={backbone}"],
                os.path.join(root, "pretrain.log"))
    pretrain_accuracy = _last_eval_accuracy(pretrain)
    print(f"pretrained airbench93 on classes 0-4: test accuracy {100 * pretrain_accuracy:.2f}% "
          f"({times['pretrain']:.0f} s)", flush=True)

    results = {"pretrain_accuracy": pretrain_accuracy, "train_steps": FLAGS.train_steps,
               "global_batch_size": FLAGS.global_batch_size, "seed": FLAGS.seed, "rows": []}
    for per_class in rows:
        row = {"labels_per_class": per_class or TRAIN_PER_CLASS}
        for arm in ARMS:
            name = f"{per_class or 'all'}-{arm}"
            folder = os.path.join(root, name)
            args = [f"--flagfile={FLAGS.flagfile_arms}", f"--data_dir={data}", f"--model_dir={folder}",
                    f"--seed={FLAGS.seed}", "--noprogress",
                    *arm_flags(arm, per_class, backbone, train_steps=FLAGS.train_steps,
                               global_batch=FLAGS.global_batch_size), *FLAGS.extra]
            times[name] = _launch("launch.train", args, os.path.join(root, f"{name}.log"))
            row[arm] = _arm_accuracy(folder, arm)
            print(f"{row['labels_per_class']:>5} per class, {arm:>8}: {100 * row[arm]:.2f}% "
                  f"({times[name]:.0f} s)", flush=True)
        results["rows"].append(row)
    results["seconds"] = times
    with open(os.path.join(root, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    text = table(results)
    with open(os.path.join(root, "transfer.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    try:
        draw(results, os.path.join(root, "transfer.png"))
        print(f"picture: {os.path.join(root, 'transfer.png')}")
    except ImportError:
        print('no picture: matplotlib is missing (pip install -e ".[plot]")')


if __name__ == "__main__":
    app.run(main)
