from pathlib import Path

import pytest
import yaml

from srpo_cli import config
from srpo_cli.errors import UsageError


def _resolve(tmp_path, flags=None, preset=None, file_tree=None, environ=None):
    path = tmp_path / "srpo.yaml"
    if file_tree is not None:
        path.write_text(yaml.safe_dump(file_tree))
    return config.resolve(flags or {}, preset=preset, config_path=path, environ=environ or {})


def test_defaults_are_the_reference_code_s():
    cfg = config.RunConfig()
    assert (cfg.behavior.steps, cfg.behavior.batch_size, cfg.behavior.lr, cfg.behavior.weight_decay) == (
        2_000_000,
        2048,
        3e-4,
        0.01,
    )
    assert (cfg.critic.steps, cfg.critic.batch_size, cfg.critic.expectile, cfg.critic.discount, cfg.critic.tau) == (
        1_500_000,
        256,
        0.7,
        0.99,
        0.005,
    )
    e = cfg.extract
    assert (e.steps, e.batch_size, e.t_min, e.t_max, e.weighting, e.noise_baseline, e.q_reduce) == (
        1_000_000,
        256,
        0.02,
        0.98,
        "sigma2",
        False,
        "mean",
    )
    assert (cfg.behavior.t_min, cfg.behavior.dropout, cfg.behavior.fourier_scale) == (0.001, 0.1, 30.0)


def test_precedence_flag_env_file_preset_default(tmp_path):
    preset = "bench-hopper-medium"  # sets extract.beta 0, critic.steps 150000 (the default beta is 0.05)
    cfg = _resolve(tmp_path, preset=preset)
    assert cfg.extract.beta == 0.0 and cfg.critic.steps == 150_000
    assert (cfg.behavior.n_blocks, cfg.behavior.block_expansion, cfg.behavior.steps) == (2, 1, 336_000)
    cfg = _resolve(tmp_path, preset=preset, file_tree={"extract": {"beta": 0.3}, "critic": {"steps": 7}})
    assert cfg.extract.beta == 0.3 and cfg.critic.steps == 7
    cfg = _resolve(tmp_path, preset=preset, file_tree={"extract": {"beta": 0.3}}, environ={"SRPO_EXTRACT__BETA": "0.4"})
    assert cfg.extract.beta == 0.4
    cfg = _resolve(
        tmp_path,
        flags={"extract.beta": 0.5},
        preset=preset,
        file_tree={"extract": {"beta": 0.3}},
        environ={"SRPO_EXTRACT__BETA": "0.4"},
    )
    assert cfg.extract.beta == 0.5


def test_default_dataset_gets_its_small_budget(tmp_path):
    cfg = _resolve(tmp_path)
    assert cfg.dataset == config.DEFAULT_DATASET
    assert cfg.behavior.steps < 20_000  # the pendulum preset, not the paper's 2M


def test_unknown_key_names_the_closest_valid_key(tmp_path):
    with pytest.raises(UsageError, match="extract.beta"):
        _resolve(tmp_path, file_tree={"extract": {"betta": 0.1}})
    (tmp_path / "srpo.yaml").unlink()
    with pytest.raises(UsageError, match="critic.expectile"):
        _resolve(tmp_path, environ={"SRPO_CRITIC__EXPECTILES": "0.8"})
    with pytest.raises(UsageError, match="Did you mean 'seed'"):
        config.parse_set(["sed=3"])


def test_bad_values_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="expected int"):
        _resolve(tmp_path, file_tree={"critic": {"steps": "many"}})
    with pytest.raises(UsageError, match="choose one of"):
        config.parse_set(["extract.weighting=cubic"])
    with pytest.raises(UsageError, match="critic.expectile"):
        _resolve(tmp_path, file_tree={"critic": {"expectile": 1.5}})
    with pytest.raises(UsageError, match="extract.beta"):
        _resolve(tmp_path, file_tree={"extract": {"beta": -0.1}})
    assert _resolve(tmp_path, file_tree={"extract": {"beta": 0}}).extract.beta == 0  # the pure-regularization ablation
    with pytest.raises(UsageError, match="threads"):
        _resolve(tmp_path, file_tree={"threads": -1})


def test_an_invalid_value_names_what_it_must_be_and_where_it_was_set(tmp_path):
    def message(**kw) -> str:
        with pytest.raises(UsageError) as e:
            _resolve(tmp_path, **kw)
        return str(e.value)

    text = message(file_tree={"critic": {"discount": 2}})
    assert "critic.discount" in text and "between 0 and 1" in text and "srpo.yaml" in text
    text = message(file_tree={}, environ={"SRPO_EVAL__EPISODES": "0"})
    assert "positive integer" in text and "SRPO_EVAL__EPISODES" in text
    # the flag wins over the file, so the flag is the one to fix
    text = message(file_tree={"extract": {"beta": -1}}, flags={"extract.beta": -2.0})
    assert "-2.0" in text and "command line" in text and "srpo.yaml" not in text
    # t_min is judged against t_max; a t_max beyond 1 is named as such
    assert "below extract.t_max (0.5)" in message(file_tree={"extract": {"t_min": 0.6, "t_max": 0.5}})
    assert "'extract.t_max'" in message(file_tree={"extract": {"t_max": 1.5}})


def test_set_coerces_types():
    values = config.parse_set(["extract.noise_baseline=true", "critic.steps=10", "extract.beta=0.2"])
    assert values == {"extract.noise_baseline": True, "critic.steps": 10, "extract.beta": 0.2}


def test_presets_cover_the_spec_beta_table():
    table = {
        "halfcheetah-medium-expert": 0.01,
        "hopper-medium-expert": 0.01,
        "walker2d-medium-expert": 0.1,
        "halfcheetah-medium": 0.2,
        "hopper-medium": 0.05,
        "walker2d-medium": 0.05,
        "halfcheetah-medium-replay": 0.2,
        "hopper-medium-replay": 0.2,
        "walker2d-medium-replay": 0.5,
        "antmaze-umaze": 0.02,
        "antmaze-umaze-diverse": 0.04,
        "antmaze-medium-play": 0.08,
        "antmaze-medium-diverse": 0.05,
        "antmaze-large-play": 0.06,
        "antmaze-large-diverse": 0.05,
    }
    for name, beta in table.items():
        flat = config.flatten(config.load_preset(name), name)
        assert flat["extract.beta"] == beta, name
        if name.startswith("antmaze"):
            assert flat["critic.expectile"] == 0.9 and flat["critic.reward_mode"] == "antmaze"
            assert flat["extract.n_layers"] == 4 and flat["extract.normalize_q_grad"] is True
    for name in config.preset_names():  # every shipped preset is valid
        config.flatten(config.load_preset(name), name)
    assert {"bench-hopper-medium", "bench-halfcheetah-medium", "bench-hopper-medium-expert"} <= set(
        config.preset_names()
    )


def test_unknown_preset_suggests(tmp_path):
    with pytest.raises(UsageError, match="hopper-medium"):
        _resolve(tmp_path, preset="hoper-medium")


def test_write_yaml_round_trip(tmp_path):
    cfg = config.RunConfig()
    cfg.extract.beta = 0.123
    path = tmp_path / "srpo.yaml"
    config.write_yaml(cfg, path, pin_all=True)
    again = config.resolve({}, config_path=path, environ={})
    assert again.extract.beta == 0.123
    assert again.to_dict() == cfg.to_dict()


def test_run_dir_template():
    cfg = config.RunConfig()
    assert cfg.resolved_run_dir(3) == Path("runs/srpo-pendulum-scripted-medium-v0/seed3")


def test_written_yaml_does_not_freeze_presets(tmp_path):
    """A srpo.yaml written for one dataset must not carry its preset's values over to another dataset."""
    path = tmp_path / "srpo.yaml"
    default = config.resolve({}, config_path=path, environ={})  # the pendulum preset: critic lr 1e-3
    config.write_yaml(default, path)
    assert "critic:" in path.read_text()  # every key is documented in the file...
    from_file = config.resolve({}, config_path=path, environ={})
    assert from_file.to_dict() == default.to_dict()
    hopper = config.resolve({"dataset": "bench/hopper/medium-v0"}, config_path=path, environ={})
    assert hopper.critic.q_lr == 3e-4 and hopper.behavior.steps == 336_000  # ...but the bench preset applies


def test_a_pinned_preset_for_another_dataset_is_warned_about(tmp_path):
    """A 'preset:' line left in srpo.yaml applies to every dataset; say so when it was made for another one."""
    path = tmp_path / "srpo.yaml"
    path.write_text(yaml.safe_dump({"preset": "hopper-medium-expert"}))
    none = tmp_path / "none.yaml"
    other = {"dataset": "bench/halfcheetah/medium-v0"}

    def warned(flags, preset=None, config_path=path, environ=None):
        notes: list[str] = []
        cfg = config.resolve(flags, preset=preset, config_path=config_path, environ=environ or {}, warnings=notes)
        return cfg, notes

    cfg, notes = warned(other)
    # (not the bench preset's beta 0 and 336k steps) the documented precedence still holds: the pinned preset applies...
    assert cfg.extract.beta == 0.01 and cfg.behavior.steps != 336_000 and cfg.baseline.temperature == 3.0
    assert "d4rl/hopper/medium-expert-v2" in notes[0] and "--preset bench-halfcheetah-medium" in notes[0]
    assert len(notes) == 1 and str(path) in notes[0]  # ...and the warning names where it came from
    assert warned({"dataset": "d4rl/hopper/medium-expert-v2"})[1] == []
    # chosen on the command line, or by the dataset itself: the user asked for it, no warning
    assert warned(other, preset="hopper-medium-expert", config_path=none)[1] == []
    assert warned(other, config_path=none)[1] == []
    notes = warned(other, config_path=none, environ={"SRPO_PRESET": "bench-hopper-medium"})[1]
    assert len(notes) == 1 and "unset SRPO_PRESET" in notes[0]
