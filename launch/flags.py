"""Every command-line flag of the launch mains, defined once.

Library modules never import absl.flags: a main turns these flags into a
validated launch.config.TrainConfig and passes that down.
"""

from __future__ import annotations

from absl import flags

from engine.distribution import STRATEGIES
from launch import tasks
from models import MODEL_NAMES


def define_train_flags() -> None:
    """Defines the flags of launch.train (idempotent per process is not needed: call once)."""
    flags.DEFINE_enum("task", "classification", tasks.names(), "What to train: each task is one file in "
                      "launch/tasks/ with its data, model, loss, metrics and flags.")
    tasks.define_flags()
    flags.DEFINE_string("data_dir", None, "CIFAR-10 folder: train.csv/test.csv, train/ and test/ class folders, "
                        "cifar-10-python.tar.gz, cifar-10-batches-py/ or cifar-10-batches-bin/. "
                        "Unset: Keras's download cache.")
    flags.DEFINE_string("model_dir", "/tmp/cifar10_model", "Checkpoints and TensorBoard summaries; "
                        "a rerun with the same folder resumes.")
    flags.DEFINE_enum("model", "resnet56", list(MODEL_NAMES), "Network.")
    flags.DEFINE_string("backbone", None, "Transfer learning: a keras.applications name (ResNet50, MobileNetV2, "
                        "...) or a saved .keras/.h5/SavedModel path; frozen, with a new head. Replaces --model.")
    flags.DEFINE_string("backbone_weights", "imagenet", "keras.applications weights: imagenet, none, or a file.")
    flags.DEFINE_string("backbone_cut", None, "Saved backbone: layer name (e.g. mixed7) or index (e.g. -3) to cut at.")
    flags.DEFINE_list("resize_to", None, "Resize inputs to height,width before the backbone.")
    flags.DEFINE_float("dropout", 0.5, "Dropout before the transfer head.")
    flags.DEFINE_float("finetune_after_epochs", None, "Transfer learning: after this many epochs, unfreeze "
                       "--finetune_layers top layers of the backbone and go on at a lower learning rate.")
    flags.DEFINE_integer("finetune_layers", 20, "Top backbone layers to unfreeze for fine-tuning "
                         "(BatchNorm stays frozen).")
    flags.DEFINE_float("finetune_lr_factor", 0.1, "Learning-rate factor for the fine-tuning phase.")
    flags.DEFINE_integer("batch_size", 128, "Per-replica batch; the global batch is this times the replicas.")
    flags.DEFINE_integer("global_batch_size", None, "Global batch over all replicas, instead of --batch_size; "
                         "must be divisible by the replicas.")
    flags.DEFINE_float("epochs", 60, "Epochs to train in total (fractions allowed).")
    flags.DEFINE_integer("train_steps", None, "Optimizer steps to train in total; overrides --epochs.")
    flags.DEFINE_integer("steps_per_loop", 50, "Steps per call of the compiled training loop.")
    flags.DEFINE_integer("checkpoint_every_steps", 200, "Checkpoint every this many steps, and at each epoch end.")
    flags.DEFINE_integer("keep_checkpoints", 3, "How many recent checkpoints to keep.")
    flags.DEFINE_enum("strategy", "default", list(STRATEGIES), "tf.distribute strategy.")
    flags.DEFINE_list("worker_hosts", None, "Multi-worker: host:port of every worker (instead of TF_CONFIG).")
    flags.DEFINE_list("ps_hosts", None, "Parameter-server training: host:port of every ps task.")
    flags.DEFINE_string("chief_host", None, "Parameter-server training: host:port of the chief (coordinator).")
    flags.DEFINE_string("task_type", None, "This process's job in the cluster: chief, worker or ps.")
    flags.DEFINE_integer("task_index", None, "This process's index in its job.")
    flags.DEFINE_float("collective_timeout_s", 600, "multi_worker_mirrored: fail a collective (a worker died) "
                       "after this many seconds instead of waiting forever.")
    flags.DEFINE_bool("memory_growth", False, "Allocate GPU memory as needed instead of all at start.")
    flags.DEFINE_string("visible_gpus", None, "Comma-separated GPU indices to use (default: all).")
    flags.DEFINE_integer("num_cpu_devices", 1, "Split the CPU into this many logical devices (with "
                         "--strategy=mirrored: several replicas on a machine without GPUs).")
    flags.DEFINE_float("learning_rate", 0.1, "Learning rate at a global batch of 128; scaled linearly "
                       "with the global batch.")
    flags.DEFINE_list("lr_boundaries", ["30", "45"], "Epochs (floats allowed) at which the learning rate "
                      "becomes base x the matching --lr_multipliers value.")
    flags.DEFINE_list("lr_multipliers", ["0.1", "0.01"], "Factors of the base learning rate, one per boundary.")
    flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
    flags.DEFINE_float("weight_decay", 1e-4, "Weight decay of conv and dense kernels (the paper's 1e-4).")
    flags.DEFINE_integer("seed", 0, "Seed of the initial weights, the shuffle and the augmentation.")
    flags.DEFINE_bool("deterministic", False, "Op determinism and fixed seeds: a run killed at any step and "
                      "rerun ends with bitwise the same weights as an uninterrupted one (slower).")
    flags.DEFINE_integer("nonfinite_limit", 10, "Skip steps with NaN/Inf loss or gradients; after this many in a "
                         "row, apply --nonfinite_action. 0 turns the guard off.")
    flags.DEFINE_enum("nonfinite_action", "rollback", ["rollback", "stop"], "rollback: restore the newest "
                      "checkpoint and multiply the learning rate by --rollback_lr_factor; stop: exit with an error.")
    flags.DEFINE_float("rollback_lr_factor", 0.5, "Learning-rate factor applied at each rollback; it compounds "
                       "(the second rollback trains at factor^2 of the schedule).")
    flags.DEFINE_integer("max_rollbacks", 3, "Rollbacks allowed over the run; at the next divergence the run stops "
                         "with exit status 1. -1: no limit.")
    flags.DEFINE_string("best_metric", "eval_accuracy", "Keep the checkpoint with the best value of this eval "
                        "metric in <model_dir>/best (empty: keep none).")
    flags.DEFINE_bool("progress", True, "Show a progress bar per epoch.")
    # Input pipelines (datasets.images): any image source instead of --data_dir's CIFAR-10.
    flags.DEFINE_string("train_data", None, "Training images: a folder of class folders, a CSV index "
                        "('<path>,<class id>' rows, paths relative to the CSV) or a TFRecord glob "
                        "(datasets.to_tfrecord). Replaces --data_dir.")
    flags.DEFINE_string("eval_data", None, "Evaluation images, in any of --train_data's forms.")
    flags.DEFINE_string("augment", "cifar", "Augmentation recipes, comma-separated, applied in order: "
                        "cifar (pad-crop-flip), flip, jitter (brightness/contrast), affine (rotation/shift/"
                        "shear/zoom/flip, as ImageDataGenerator), imagenet (random resize+224 crop; first), none.")
    flags.DEFINE_list("image_size", None, "height,width to resize --train_data images to (imagenet: the crop).")
    flags.DEFINE_enum("cache", "decoded", ["decoded", "encoded", "none"], "--train_data: decode every image once "
                      "into memory (decoded), keep the file bytes in memory (encoded), or read files every epoch.")
    flags.DEFINE_enum("normalize", "channel", ["channel", "per_image", "imagenet", "unit"],
                      "--train_data: per-channel mean/std of the training images, per-image standardisation, "
                      "ImageNet mean subtraction, or /255.")
    flags.DEFINE_bool("skip_bad_examples", False, "Leave out images that are missing, empty or undecodable "
                      "(counted and reported) instead of stopping with their name.")
    # Optimisation.
    flags.DEFINE_enum("optimizer", "sgd", ["sgd", "adam", "adamw", "rmsprop", "nadam"], "Optimizer.")
    flags.DEFINE_bool("nesterov", False, "SGD with Nesterov momentum.")
    flags.DEFINE_float("decoupled_weight_decay", 0.0, "Decoupled weight decay per step, times the learning rate "
                       "(AdamW-style; adamw defaults to 0.004 when 0 is not given explicitly). Separate from "
                       "--weight_decay, the L2 loss on kernels.")
    flags.DEFINE_float("clip_norm", None, "Clip gradients to this global L2 norm.")
    flags.DEFINE_integer("accumulation_steps", 1, "Accumulate gradients over this many global batches per update.")
    flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16", "float16"], "Compute precision "
                      "(mixed: weights stay float32; float16 adds loss scaling).")
    flags.DEFINE_float("ema_decay", 0.0, "Moving average of the weights for evaluation and export (e.g. 0.999); "
                       "0 for none.")
    flags.DEFINE_float("label_smoothing", 0.0, "Label smoothing of the training loss.")
    flags.DEFINE_bool("jit_compile", False, "Compile each replica's forward-backward pass with XLA (slower on "
                      "this CPU; try it on GPUs).")
    flags.DEFINE_bool("sync_batch_norm", False, "BatchNormalization statistics over the global batch (all "
                      "replicas), Keras's synchronized=True; such layers do not use the fused kernel.")
    flags.DEFINE_bool("fused_batch_norm", True, "Run BatchNormalization layers on TensorFlow's fused kernel in the "
                      "compiled steps (same results; 1.36x faster ResNet-20 steps here); --nofused_batch_norm "
                      "keeps Keras's computation.")
    flags.DEFINE_enum("lr_schedule", "piecewise", ["piecewise", "constant", "cosine", "onecycle"],
                      "Learning-rate schedule (piecewise uses --lr_boundaries/--lr_multipliers; onecycle peaks at "
                      "--learning_rate).")
    flags.DEFINE_float("warmup_epochs", 0.0, "Linear learning-rate warm-up over this many epochs.")
    flags.DEFINE_integer("plateau_patience", 0, "Multiply the learning rate by --plateau_factor after this many "
                         "epochs without a better --plateau_metric; 0 turns it off.")
    flags.DEFINE_float("plateau_factor", 0.1, "Learning-rate factor on a plateau.")
    flags.DEFINE_string("plateau_metric", "eval_loss", "Epoch-end metric watched for plateaus.")
    # Hooks.
    flags.DEFINE_integer("early_stopping_patience", 0, "Stop after this many epochs without a better "
                         "--early_stopping_metric; 0 turns it off.")
    flags.DEFINE_string("early_stopping_metric", "eval_loss", "Epoch-end metric watched by early stopping.")
    flags.DEFINE_float("early_stopping_min_delta", 0.0, "Smallest change that counts as better.")
    flags.DEFINE_bool("restore_best", True, "On early stopping, restore the best epoch's weights.")
    flags.DEFINE_integer("histogram_every_epochs", 0, "TensorBoard weight histograms every this many epochs; 0: off.")
    flags.DEFINE_list("profile_steps", None, "start,stop: record the TensorFlow profiler over these global steps.")
    flags.DEFINE_float("max_time", None, "Wall-clock budget in seconds: checkpoint and stop at the first loop end "
                       "past it (rerun to go on).")
