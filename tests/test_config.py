import pytest
from omegaconf import OmegaConf

from semcorr.config import ConfigError, available, load_config, save_config
from semcorr.registry import GROUPS


@pytest.mark.parametrize("group", GROUPS)
def test_every_config_file_builds(group):
    names = available(group)
    assert names, f"no config files for {group}"
    for name in names:
        cfg = load_config([f"{group}={name}"])
        assert cfg[group].name == name
        assert cfg[group].kind


def test_defaults_are_the_offline_demo():
    cfg = load_config([])
    assert (cfg.data.kind, cfg.backbone.kind, cfg.matcher.kind) == ("synthetic", "dsift", "nn")


def test_group_file_and_overrides_layer_in_order():
    cfg = load_config(["data=pf_willow", "backbone=dsift", "data.max_pairs=100",
                       "matcher.transfer.method=window_soft_argmax", "out_dir=runs/x"])
    assert cfg.data.kind == "pf_willow" and cfg.data.max_pairs == 100
    assert cfg.matcher.transfer.method == "window_soft_argmax"
    assert cfg.out_dir == "runs/x"


def test_override_types_are_checked():
    with pytest.raises(ConfigError, match="data.image_size"):
        load_config(["data.image_size=big"])


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        load_config(["data.max_pair=3"])
    assert "max_pairs" in str(err.value) and "image_size" in str(err.value)


def test_unknown_group_name_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        load_config(["backbone=resnet9000"])
    assert "dsift" in str(err.value) and "dinov2_vitb14" in str(err.value)


def test_struct_mode_rejects_new_keys_after_loading():
    cfg = load_config([])
    with pytest.raises(Exception):
        cfg.data.not_a_key = 1


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config(["data=pf_willow", "data.max_pairs=7", f"out_dir={tmp_path}"])
    path = save_config(cfg, tmp_path)
    again = OmegaConf.load(path)
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg, resolve=True)


def test_every_experiment_file_builds_and_the_command_line_wins():
    names = available("experiment")
    assert {"paper_spair", "paper_pf_pascal", "paper_tss"} <= set(names)
    for name in names:
        cfg = load_config([f"experiment={name}"])
        assert cfg.experiment == name and cfg.backbone.name == "dinov2_vitb14"
        if name.startswith("paper_"):  # the zero-shot paper settings, on GeoAware-SC's canvas
            assert cfg.matcher.kind == "gwot" and cfg.backbone.norm is False
            assert (cfg.data.image_size, cfg.data.resize) == (840, "centre_canvas")
            assert cfg.pose_align.enabled == name.endswith("pose_align")  # never on by default
        else:
            assert (cfg.data.image_size, cfg.data.resize) == (840, "longer_side_pad")
    cfg = load_config(["data.image_size=448", "experiment=paper_spair", "matcher.lam_sym=0.3"])
    assert cfg.data.image_size == 448 and cfg.matcher.lam_sym == 0.3 and cfg.matcher.lam_gw == 0.1
    assert load_config(["experiment=paper_tss"]).metric.alphas == [0.05]
    gw = load_config(["experiment=survey_baseline_gwot"])
    assert (gw.loss.kind, gw.matcher.name, gw.head.kind, gw.backbone.trainable_blocks) == (
        "ot_nll", "gwot_spair", "resnet_bottleneck", 2)


def test_bad_experiment_files_fail_in_one_line(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "typo.yaml").write_text("tokens: [data.imag_size=840]\n")
    (tmp_path / "experiment" / "shape.yaml").write_text("groups: {data: spair}\n")
    with pytest.raises(ConfigError, match="imag_size"):
        load_config(["experiment=typo"], extra_dirs=[tmp_path])
    with pytest.raises(ConfigError, match="holds description and tokens"):
        load_config(["experiment=shape"], extra_dirs=[tmp_path])
    with pytest.raises(ConfigError, match="paper_spair"):
        load_config(["experiment=nope"])


@pytest.mark.parametrize("tokens,message", [
    (["data.image_size=0"], "data.image_size must be an integer >= 1, got 0"),
    (["data.batch_size=0"], "data.batch_size must be an integer >= 1"),
    (["data.resize=crop"], "data.resize must be one of square, longer_side_pad, longer_side, centre_canvas"),
    (["data.augment.hflip_p=2"], "data.augment.hflip_p must be a number >= 0 and <= 1, got 2"),
    (["data=tss", "data.query_stride=0"], "data.query_stride must be an integer >= 1"),
    (["metric.alphas=[0.1,-1]"], "metric.alphas must be a non-empty list of numbers > 0 and <= 1"),
    (["metric.average=mean"], "metric.average must be one of per_image, per_keypoint (or null)"),
    (["trainer.max_steps=-2"], "trainer.max_steps must be an integer >= -1, got -2"),
    (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches must be an integer >= 1"),
    (["optim.lr=-1"], "optim.lr must be a number > 0, got -1"),
    (["optim.scheduler=step"], "optim.scheduler must be one of cosine, constant, got 'step'"),
    (["checkpointing.every_n_steps=-1"], "checkpointing.every_n_steps must be an integer >= 0"),
    (["cache.memory_mb=-5"], "cache.memory_mb must be a number >= 0"),
    (["plots.n_pairs=-1"], "plots.n_pairs must be an integer >= 0"),
    (["logger.mode=sometimes"], "logger.mode must be one of auto, online, offline, disabled"),
    (["backbone=dinov2_vits14", "backbone.trainable_blocks=-2"], "backbone.trainable_blocks must be an integer >= -1"),
    (["backbone.stride=0"], "backbone.stride must be an integer >= 1, got 0"),
    (["head=resnet_bottleneck", "head.reduction=0"], "head.reduction must be an integer >= 1"),
    (["loss=gaussian_ce", "loss.window=4"], "loss.window must be an odd integer >= 1, got 4"),
    (["loss=ot_nll", "loss.temperature=0"], "loss.temperature must be a number > 0"),
    (["matcher=ot", "matcher.eps=0"], "matcher.eps must be > 0"),
    (["matcher.transfer.window=0"], "matcher.transfer.window must be an integer >= 1, got 0"),
    (["device=gpu"], "device must be one of auto, cpu, cuda, got 'gpu'"),
])
def test_every_section_checks_its_ranges(tokens, message):
    """OmegaConf does not run the dataclasses' __post_init__ on merged values; load_config does,
    and names the dotted key and the valid range in one line."""
    with pytest.raises(ConfigError) as err:
        load_config(tokens)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
