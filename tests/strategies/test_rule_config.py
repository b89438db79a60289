"""Each rule owns its settings: its constructor gives the defaults, its config node lists exactly
those keys, and a key it does not take is refused in one line."""

import pytest

from peerkd.errors import ConfigError
from simulations.cli import main
from simulations.flwr_app import config_from_run_config
from strategies import RULES, build_strategy, rule_settings


def test_a_key_the_rule_does_not_take_is_refused_naming_its_keys(capsys):
    assert main(["run", "strategy=dsfl", "strategy.temperature=2"]) == 2
    err = capsys.readouterr().err
    expected = (
        "strategy.temperature: not a setting of rule 'dsfl'"
        " (allowed: era_temperature, digest_epochs, aggregator, trim, clip_norm)"
    )
    assert err == f"peerkd: error: {expected}\n"


def test_cfg_job_lists_only_the_rules_own_settings(capsys):
    assert main(["run", "strategy=peer", "--cfg", "job"]) == 0
    out = capsys.readouterr().out
    block = out[out.index("strategy:") : out.index("data:")]
    assert block.split() == [
        "strategy:",
        "name:",
        "peer",
        "alpha:",
        "1.0",
        "temperature:",
        "0.0",
        "aggregator:",
        "mean",
        "trim:",
        "0.2",
        "clip_norm:",
        "0.0",
    ]


def test_compare_refuses_a_setting_no_listed_rule_takes(capsys):
    assert main(["compare", "rules=[local,peer]", "strategy.weight_lr=2"]) == 2
    assert (
        "strategy.weight_lr: no rule of ['local', 'peer'] takes it"
        " (allowed: aggregator, alpha, clip_norm, temperature, trim)" in capsys.readouterr().err
    )


@pytest.mark.parametrize("rule", sorted(RULES))
def test_every_rule_builds_from_its_own_defaults(rule):
    defaults = {k: default for k, (_, default) in rule_settings(rule).items()}
    assert build_strategy(rule, **defaults).name == rule


def test_build_strategy_refuses_a_foreign_key():
    with pytest.raises(ConfigError, match=r"^strategy\.alpha: not a setting of rule 'fedmd'"):
        build_strategy("fedmd", alpha=0.5)


def test_flwr_run_config_keeps_rule_defaults_and_refuses_foreign_keys():
    cfg = config_from_run_config({"strategy": "dsfl", "temperature": "", "digest-epochs": 3})
    assert dict(cfg.strategy) == {
        "name": "dsfl",
        "era_temperature": 0.1,
        "digest_epochs": 3,
        "aggregator": "mean",
        "trim": 0.2,
        "clip_norm": 0.0,
    }
    with pytest.raises(Exception, match="temperature"):
        config_from_run_config({"strategy": "dsfl", "temperature": 2.0})
