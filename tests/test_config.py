import re

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from fedabd.config import FIELDS, ConfigError, ScenarioConfig, load_scenario, scenario_from_run_config


def write(tmp_path, data, name="s.yaml"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def test_defaults_are_valid_and_flags_override_file(tmp_path):
    p = write(tmp_path, {"clients": 6, "malicious": 1, "kd": "zskt"})
    cfg = load_scenario(p, {"malicious": 2, "rounds": None})
    assert (cfg.clients, cfg.malicious, cfg.kd, cfg.rounds) == (6, 2, "zskt", ScenarioConfig().rounds)


def test_exponent_floats_without_a_dot_are_numbers_in_files_and_flags(tmp_path):
    # PyYAML's YAML 1.1 would read 1e-3 as the string "1e-3"; users write it that way
    p = write(tmp_path, "kd: zskt\nlocal_lr: 5e-2\nkd_overrides: {s_lr: 1e-3, sr_lr: 2E-4}\n")
    cfg = load_scenario(p, {})
    assert cfg.local_lr == 0.05 and cfg.kd_overrides == {"s_lr": 0.001, "sr_lr": 0.0002}
    cfg = scenario_from_run_config({"overrides": "local_lr=3e-2"})
    assert cfg.local_lr == 0.03


@pytest.mark.parametrize("data, needle", [
    ({"clinets": 3}, "unknown key(s) clinets"),
    ({"clients": "five"}, "clients must be int"),
    ({"clients": True}, "clients must be int"),
    ({"clients": 2, "malicious": 3}, "malicious: must be between 0 and clients"),
    ({"alpha": 0}, "alpha: must be > 0"),
    ({"attack": "nope"}, "unknown attack 'nope'"),
    ({"kd": "nope"}, "kd: unknown distillation method 'nope'"),
    ({"kd": "vanilla"}, "needs the clients' data"),
    ({"partition": "nope"}, "partition: unknown partition scheme 'nope'"),
    ({"aggregator": "nope"}, "aggregator: unknown aggregator 'nope'"),
    ({"abd": "sv+sx"}, "abd: unknown defence 'sx'"),
    ({"abd": "sv+sv"}, "names a part twice"),
    ({"kd": "cmi", "kd_overrides": {"epoch": 3}}, "kd_overrides: unknown setting 'epoch'"),
    ({"kd": "cmi", "kd_overrides": {"epochs": "3"}}, "kd_overrides: setting 'epochs'"),
    ({"abd": "sr", "sr": {"fracton": 0.1}}, "sr: unknown setting 'fracton'"),
    ({"abd": "sr", "sr": {"fraction": 2.0}}, "sr: SRConfig.fraction must be in (0, 1]"),
    ({"abd": "sv", "sv": {"k": 0}}, "sv: SV needs k >= 1"),
    ({"aggregator": "fedtrimmedavg", "aggregator_settings": {"beta": 0.7}}, "aggregator_settings: beta must be"),
    ({"aggregator": "multikrum", "aggregator_settings": {"byzantin": 1}}, "aggregator_settings: unknown setting"),
    ({"student": "nope"}, "unknown model 'nope'"),
    ({"fraction": 0}, "fraction: must be in (0, 1]"),
    ({"malicious_ids": [0, 0]}, "malicious_ids"),
    ({"client_archs": ["lenet5"]}, "one architecture per client"),
    ({"aggregator": "fedavg", "abd": "sv+sr"}, "fedavg does not distil"),
    ("clients: [1, 2\n", "malformed YAML"),
    ("- a\n- b\n", "must be a mapping"),
])
def test_bad_files_name_the_key_and_the_file(tmp_path, data, needle):
    p = write(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        load_scenario(p)
    assert needle in str(e.value)
    assert str(p) in str(e.value)


def test_bad_flag_is_reported_as_command_line():
    with pytest.raises(ConfigError, match="command-line flags: malicious"):
        load_scenario(None, {"malicious": 99})


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_scenario("/nonexistent/x.yaml")


_values = st.one_of(st.none(), st.booleans(), st.integers(-5, 50), st.floats(allow_nan=True), st.text(max_size=8),
                    st.lists(st.integers(-2, 8), max_size=4), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(FIELDS) + ["bogus_key"]), _values, max_size=4))
def test_loader_either_accepts_or_raises_config_error(tmp_path_factory, data):
    p = tmp_path_factory.mktemp("cfg") / "s.yaml"
    p.write_text(yaml.safe_dump(data))
    try:
        cfg = load_scenario(p)
    except ConfigError as e:
        assert str(p) in str(e)
    else:
        assert isinstance(cfg, ScenarioConfig)
        assert 0 <= cfg.malicious <= cfg.clients and cfg.alpha > 0


def test_flower_run_config_with_overrides_string():
    from fedabd.config import scenario_from_run_config

    cfg = scenario_from_run_config({"scenario": "quickstart", "out": "/tmp/x",
                                    "overrides": "clients=2, malicious=0,aggregator=fedavg,local-epochs=1"})
    assert (cfg.name, cfg.clients, cfg.malicious, cfg.aggregator, cfg.local_epochs, cfg.out) == \
        ("quickstart", 2, 0, "fedavg", 1, "/tmp/x")
    with pytest.raises(ConfigError, match="key=value"):
        scenario_from_run_config({"overrides": "clients"})


def alias_bomb(levels: int = 9) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("where", ["top", "sv"])
def test_a_yaml_alias_bomb_is_refused_in_under_a_second(tmp_path, where):
    import time

    text = alias_bomb()
    if where == "sv":  # inside a setting that takes a mapping
        text = "sv:\n" + "".join(f"  {line}\n" for line in text.splitlines())
    p = write(tmp_path, text)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="once aliases are expanded"):
        load_scenario(p)
    assert time.perf_counter() - t0 < 1.0


def test_scenario_paths_that_are_not_small_regular_files_are_refused(tmp_path):
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")
    with pytest.raises(ConfigError, match="not a regular file"):
        load_scenario(tmp_path / "zero.yaml")
    with pytest.raises(ConfigError, match="not a regular file"):
        load_scenario(tmp_path)
    (tmp_path / "big.yaml").write_text("description: " + "x" * (2 << 20) + "\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_scenario(tmp_path / "big.yaml")


@pytest.mark.parametrize("values, needle", [
    ({"seed": -1}, "seed: must be between 0"),
    ({"local_lr": float("nan")}, "local_lr: must be a finite number"),
    ({"local_clip": -1.0}, "local_clip: must be >= 0"),
    ({"client_timeout": float("inf")}, "client_timeout: must be a finite number"),
    ({"startup_timeout": -1.0}, "startup_timeout: must be >= 0"),
    ({"device": "banana"}, "device: unknown device 'banana'"),
    ({"device": "cuda:7"}, "device: "),
    ({"clients": 10, "fraction": 0.2, "min_clients": 3}, "min_clients: 3 is more than the 2 client(s)"),
    ({"initial_model": ""}, "initial_model: '': no such model file"),
])
def test_settings_that_would_fail_after_training_are_refused_at_load(values, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_scenario(None, values)
