"""A new run's configs: the dataclass defaults, with the fields that a method's registry
entry (or the reward config) names a deployment setting for taken from that setting.
Today only PPO and the reward model have such settings (PREFLOOP_PPO_*, PREFLOOP_RM_*)."""

from __future__ import annotations

import pytest

from training.ml.configs import ConfigError, config_to_dict, values_from_settings
from training.ml.methods import METHODS
from training.ml.methods.ppo import PPOConfig
from training.ml.reward_training import RewardTrainingConfig
from training.services.runs import method_defaults, reward_defaults

PPO_SETTINGS = {"PREFLOOP_PPO_BATCH_SIZE": 4, "PREFLOOP_PPO_RESPONSE_LENGTH": 48, "PREFLOOP_PPO_EPISODES": 96,
                "PREFLOOP_PPO_LEARNING_RATE": 1e-4, "PREFLOOP_PPO_KL_COEF": 0.2, "PREFLOOP_PPO_REFERENCE": "previous"}
RM_SETTINGS = {"PREFLOOP_RM_FULL_FINETUNE": True, "PREFLOOP_RM_LEARNING_RATE": 2e-5, "PREFLOOP_RM_EPOCHS": 3.0,
               "PREFLOOP_RM_BATCH_SIZE": 4, "PREFLOOP_RM_ENSEMBLE_SIZE": 0, "PREFLOOP_RM_REFIT_EVERY_LABELS": 0}


def test_ppo_defaults_follow_the_ppo_settings(settings):
    for name, value in PPO_SETTINGS.items():
        setattr(settings, name, value)
    assert method_defaults("ppo") == config_to_dict(PPOConfig(
        batch_size=4, response_length=48, total_episodes=96, learning_rate=1e-4, kl_coef=0.2, reference="previous"))
    settings.PREFLOOP_PPO_EPISODES = 0  # "one episode per prompt", which the config says with None
    assert method_defaults("ppo")["total_episodes"] is None


def test_the_other_methods_start_from_their_dataclass_defaults_whatever_the_ppo_settings_say(settings):
    for name, value in PPO_SETTINGS.items():
        setattr(settings, name, value)
    for method in METHODS.values():
        if method.name != "ppo":
            assert method.deployment_defaults == {}
            assert method_defaults(method.name) == config_to_dict(method.config_class()), method.name


def test_reward_defaults_follow_the_reward_model_settings(settings):
    for name, value in RM_SETTINGS.items():
        setattr(settings, name, value)
    assert reward_defaults() == config_to_dict(RewardTrainingConfig(
        use_lora=False, learning_rate=2e-5, epochs=3.0, batch_size=4, ensemble_size=0, refit_every_labels=0))
    settings.PREFLOOP_RM_FULL_FINETUNE, settings.PREFLOOP_RM_LEARNING_RATE = False, 0.0  # 0: picked by use_lora
    assert reward_defaults()["use_lora"] is True and reward_defaults()["learning_rate"] is None


def test_every_declared_setting_exists(settings):
    declared = [RewardTrainingConfig.DEPLOYMENT_DEFAULTS, *(m.deployment_defaults for m in METHODS.values())]
    names = {name.removeprefix("not ") for names in declared for name in names.values()}
    assert names and all(hasattr(settings, name) for name in names), sorted(names)


def test_a_declaration_must_name_a_field_and_negate_only_a_bool():
    with pytest.raises(ConfigError, match="no field"):
        values_from_settings(PPOConfig, {"batch": "PREFLOOP_PPO_BATCH_SIZE"}, lambda name: 8)
    with pytest.raises(ConfigError, match="only a bool field"):
        values_from_settings(PPOConfig, {"batch_size": "not PREFLOOP_PPO_BATCH_SIZE"}, lambda name: 8)
