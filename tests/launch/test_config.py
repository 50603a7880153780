import pytest

from launch.config import TrainConfig, parse_floats
from launch.train import flagfiles_first


def _config(tmp_path, **overrides):
    return TrainConfig.create(**{"data_dir": str(tmp_path), "model_dir": str(tmp_path / "m"), **overrides})


@pytest.mark.parametrize("overrides,message", [
    ({"batch_size": 0}, "--batch_size=0 must be positive"),
    ({"epochs": -1}, "--epochs=-1 must be positive"),
    ({"train_steps": 0}, "--train_steps=0 must be positive"),
    ({"model": "resnet19"}, "--model='resnet19' is not known; choose one of resnet20"),
    ({"strategy": "horovod"}, "--strategy='horovod' is not known"),
    ({"lr_boundaries": (1.0,), "lr_multipliers": (0.1, 0.01)}, "one multiplier per boundary"),
    ({"data_dir": "/no/such/folder"}, "--data_dir=/no/such/folder does not exist"),
    ({"lookahead_alpha": 0.0}, r"--lookahead_alpha=0 must be in \(0, 1\]"),
    ({"lookahead_steps": -1}, "--lookahead_steps=-1 must be 0 \\(off\\) or positive"),
    ({"labels_per_class": 0}, "--labels_per_class=0 must be positive"),
    ({"backbone_cut": "pool"}, "--backbone_cut=pool needs --backbone"),
    ({"finetune_after_epochs": 2.0}, "--finetune_after_epochs needs --backbone"),
    ({"finetune_after_epochs": -1.0, "backbone": "x.keras"}, "--finetune_after_epochs=-1 must be 0 \\(off\\)"),
])
def test_bad_values_name_the_flag(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, **overrides)


def test_global_batch_and_learning_rate_scaling(tmp_path):
    config = _config(tmp_path, batch_size=64, learning_rate=0.1)
    assert config.global_batch(2) == 128 and config.scaled_learning_rate(128) == pytest.approx(0.1)
    assert config.scaled_learning_rate(256) == pytest.approx(0.2)
    fixed = _config(tmp_path, global_batch_size=100)
    assert fixed.global_batch(4) == 100
    with pytest.raises(ValueError, match="--global_batch_size=100 is not divisible by 3 replicas"):
        fixed.global_batch(3)


def test_epochs_may_be_anything_when_train_steps_is_given(tmp_path):
    assert _config(tmp_path, epochs=0, train_steps=10).run.train_steps == 10


def test_parse_floats_names_the_flag():
    assert parse_floats("lr_boundaries", ["1.5", "2"]) == (1.5, 2.0)
    with pytest.raises(ValueError, match="--lr_boundaries: 'x' is not a number"):
        parse_floats("lr_boundaries", ["1", "x"])


def test_flagfiles_move_to_the_front():
    argv = ["prog", "--model=resnet20", "--flagfile=a.flags", "--epochs=3", "--flagfile=b.flags"]
    assert flagfiles_first(argv) == ["prog", "--flagfile=a.flags", "--flagfile=b.flags", "--model=resnet20",
                                     "--epochs=3"]


def test_streamed_tfrecords_are_refused_under_parameter_server_but_not_other_caches(tmp_path):
    pattern = str(tmp_path / "train-*.tfrecord")
    with pytest.raises(ValueError, match=r"--train_data=.*train-\*\.tfrecord: .*parameter-server workers"):
        _config(tmp_path, data_dir=None, train_data=pattern, cache="none", strategy="parameter_server")
    assert _config(tmp_path, data_dir=None, train_data=pattern, cache="encoded", strategy="parameter_server")
    assert _config(tmp_path, data_dir=None, train_data=pattern, cache="none", strategy="mirrored")
    assert _config(tmp_path, data_dir=None, train_data=str(tmp_path), cache="none", strategy="parameter_server")


def test_a_rerun_may_change_the_epochs_but_not_the_model_or_a_deterministic_runs_seed(tmp_path):
    saved = _config(tmp_path, model="resnet20", epochs=3, seed=1).saved_flags()
    assert _config(tmp_path, model="resnet20", epochs=5, seed=2).compare_saved(saved) == \
        ["--epochs: 3 -> 5", "--seed: 1 -> 2"]
    with pytest.raises(ValueError, match=r"\(--model: resnet20 -> resnet32\): that changes the checkpoint's model"):
        _config(tmp_path, model="resnet32", epochs=3, seed=1).compare_saved(saved)
    saved = _config(tmp_path, model="resnet20", epochs=3, seed=1, deterministic=True).saved_flags()
    with pytest.raises(ValueError, match=r"\(--seed: 1 -> 2\): that changes a --deterministic run's data order"):
        _config(tmp_path, model="resnet20", epochs=3, seed=2, deterministic=True).compare_saved(saved)
    assert _config(tmp_path, model="resnet32", allow_config_change=True).compare_saved(saved)


def test_lookahead_flags_give_the_engine_a_ramp_over_the_runs_updates(tmp_path):
    from launch.experiment import _lookahead

    assert _lookahead(_config(tmp_path), steps_per_epoch=10) is None
    constant = _lookahead(_config(tmp_path, lookahead_steps=4, lookahead_alpha=0.3), steps_per_epoch=10)
    assert (constant.every_steps, constant.alpha, constant.ramp_steps) == (4, 0.3, None)
    # 2.5 epochs of 10 batches, 2 batches per update: the ramp ends at update 13 (the last).
    ramped = _lookahead(_config(tmp_path, lookahead_steps=5, lookahead_ramp=True, epochs=2.5, accumulation_steps=2),
                        steps_per_epoch=10)
    assert ramped.ramp_steps == 13
    assert _lookahead(_config(tmp_path, lookahead_steps=5, lookahead_ramp=True, train_steps=7),
                      steps_per_epoch=10).ramp_steps == 7


def test_every_engine_option_is_reached_by_exactly_one_setting():
    import dataclasses
    import inspect

    from engine import Trainer
    from launch.config import SECTIONS
    from launch.settings import OPTION_GROUPS

    targets = [f.metadata["engine"] for section in SECTIONS.values() for f in dataclasses.fields(section)
               if f.metadata.get("engine")]
    assert len(targets) == len(set(targets))  # none declared twice
    for group, options in OPTION_GROUPS.items():
        assert {t.split(".", 1)[1] for t in targets if t.startswith(group + ".")} == \
            {f.name for f in dataclasses.fields(options)}, group
    keywords = set(inspect.signature(Trainer.__init__).parameters)
    assert {t.split(".", 1)[1] for t in targets if t.startswith("trainer.")} <= keywords


def test_engine_options_carry_the_settings_with_their_off_values(tmp_path):
    from engine import CheckpointOptions, GuardOptions, KernelOptions

    options = _config(tmp_path, checkpoint_every_steps=7, keep_checkpoints=2, best_metric="", nonfinite_limit=0,
                      nonfinite_action="stop", rollback_lr_factor=0.25, max_rollbacks=-1, ema_decay=0.0,
                      fused_batch_norm=False, steps_per_loop=9,
                      accumulation_steps=3, tta="flip", progress=False).engine_options()
    assert options["checkpoint"] == CheckpointOptions(every_steps=7, keep=2, best_metric=None)
    assert options["guard"] == GuardOptions(nonfinite_limit=None, action="stop", rollback_lr_factor=0.25,
                                            max_rollbacks=None)
    assert options["kernels"] == KernelOptions(fused_batch_norm=False, sync_batch_norm=False, jit_compile=False)
    assert (options["ema_decay"], options["steps_per_loop"], options["accumulation_steps"]) == (None, 9, 3)
    assert (options["test_time_augmentation"], options["progress"]) == ("flip", False)
    on = _config(tmp_path, ema_decay=0.99, nonfinite_limit=4, max_rollbacks=0, best_metric="eval_loss")
    options = on.engine_options()
    assert options["ema_decay"] == 0.99 and options["guard"].nonfinite_limit == 4
    assert options["guard"].max_rollbacks == 0 and options["checkpoint"].best_metric == "eval_loss"


def test_finetune_after_epochs_zero_means_the_head_alone(tmp_path):
    assert not _config(tmp_path, backbone="x.keras", finetune_after_epochs=0.0).model.finetunes
    assert _config(tmp_path, backbone="x.keras", finetune_after_epochs=0.5).model.finetunes
    assert not _config(tmp_path).model.finetunes


@pytest.mark.parametrize("flag, value", [("classes", (1, 2)), ("labels_per_class", 10)])
def test_tasks_that_do_not_select_classes_refuse_the_subset_flags(tmp_path, flag, value):
    from launch import tasks

    config = _config(tmp_path, **{flag: value})
    tasks.get("classification").check(config)
    for name in ("regression", "autoencoder", "gan", "weighted_classification"):
        with pytest.raises(ValueError, match=f"--{flag} applies to image classification; the {name} task"):
            tasks.get(name).check(config)
