"""Reproduction sweeps log to W&B by default (offline without a key), one group per table; logger=none turns it off."""

from experiments.reproduce.sweep import logger_args, wandb_settings


def test_every_run_of_a_table_logs_to_one_wandb_group_unless_turned_off():
    assert logger_args([], "table2") == ["logger=wandb", "logger.group=table2"]
    assert logger_args(["logger=wandb"], "table2") == ["logger.group=table2"]
    assert logger_args(["logger.group=mine"], "table2") == ["logger=wandb"]  # the user's group wins
    assert logger_args(["logger=none"], "table2") == []
    assert wandb_settings(["logger=none"], "table2") is None
    settings = wandb_settings(["logger.mode=offline"], "table2-smoke")
    assert settings["group"] == "table2-smoke" and settings["mode"] == "offline" and settings["name"] == "wandb"
