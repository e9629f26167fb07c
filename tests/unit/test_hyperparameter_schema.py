"""The one schema of training settings (ncf_core.config) and everything generated from it: the image's
hyperparameter parser, the launch script's check, the ``ncf_core train`` CLI and the table of
docs/hyperparameters.md."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields
from itertools import takewhile
from typing import Any

import pytest

from ncf_core import config
from ncf_core.cli import build_parser, train_settings
from ncf_core.config import DataConfig, Entry, TrainConfig
from ncf_core.errors import ConfigError
from ncf_launch.aws_client import UsageError
from ncf_launch.train import check_hyperparameters
from ncf_sagemaker import contract
from ncf_sagemaker.training import hyperparameters
from tests.support import ROOT

HYPERPARAMETER_ENTRIES = [e for e in config.entries() if e.hyperparameter is not None]


def sample(e: Entry) -> Any:
    """A valid value other than the default (where the schema tells what else is valid)."""
    if e.kind is bool:
        return not e.default
    if e.choices:
        return next(c for c in e.choices if c != e.default)
    if e.kind is str:
        return e.default if e.default is not None else "somewhere"
    return (e.default or 0) + (1 if e.kind is int else 0.5)


def as_sent(value: Any) -> str:
    """How a launcher or the SageMaker console would write it."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def parsed(options: hyperparameters.JobOptions, e: Entry) -> Any:
    return getattr({TrainConfig: options.config, DataConfig: options.data}[e.section], e.name)


def test_schema_and_launchers_import_neither_torch_nor_numpy():
    code = (
        "import sys, ncf_core.config, ncf_core.jsonio, ncf_launch.train\n"
        "assert not {'torch', 'numpy'} & set(sys.modules), sorted({'torch', 'numpy'} & set(sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def test_training_still_exports_train_config():
    from ncf_core import training

    assert training.TrainConfig is TrainConfig


def test_names_are_unique_and_every_field_is_declared():
    names = [e.name for e in config.entries()]
    assert names == [f.name for section in config.SECTIONS for f in fields(section)]
    assert len(set(names)) == len(names)
    assert len({e.flag for e in config.entries()}) == len(names)
    accepted = config.hyperparameters()
    declared = [n for e in HYPERPARAMETER_ENTRIES for n in (e.hyperparameter, *e.aliases)]
    assert sorted(declared) == sorted(accepted)
    assert {"factor_num", "num_ng", "learning_rate", "num_epochs", "test_num_ng"} <= set(accepted)
    assert all("|" not in e.help and "%" not in e.help for e in config.entries())  # markdown, argparse


@pytest.mark.parametrize("name", sorted(config.hyperparameters()))
@pytest.mark.parametrize("encode", [as_sent, lambda v: json.dumps(v)], ids=["plain", "json"])
def test_the_image_accepts_every_schema_name(name, encode):
    e = config.hyperparameters()[name]
    value = sample(e)
    assert parsed(hyperparameters.parse({name: encode(value)}), e) == value


def test_the_launcher_accepts_every_schema_name_and_platform_keys():
    check_hyperparameters({name: "1" for name in config.hyperparameters()} | {"sagemaker_program": "x"})


def test_unknown_names_are_refused_by_image_and_launcher():
    with pytest.raises(ConfigError, match="unknown hyperparameter"):
        hyperparameters.parse({"learning_rat": "0.1"})
    with pytest.raises(UsageError, match="unknown hyperparameter"):
        check_hyperparameters({"learning_rat": "0.1"})
    # what is not a hyperparameter of the image (pretrain_dir comes from its channels) is refused too
    assert config.unknown_hyperparameters(["pretrain_dir", "sagemaker_region"]) == ["pretrain_dir"]


def test_platform_keys_are_the_platforms():
    assert config.PLATFORM_HP_PREFIX == contract.DISTRIBUTION_HP_PREFIX


def test_cli_defaults_are_the_schemas():
    args = build_parser().parse_args(["train", "--data", "d", "--model-dir", "m"])
    assert train_settings(args) == (TrainConfig(), DataConfig())


def test_cli_exposes_every_setting():
    argv = ["train", "--data", "d", "--model-dir", "m"]
    for e in config.entries():
        value = sample(e)
        if e.kind is bool:
            argv.append(e.flag if value else "--no-" + e.flag.removeprefix("--"))
        else:
            argv += [e.flag, as_sent(value)]
    args = build_parser().parse_args(argv)
    assert {e.name: getattr(args, e.name) for e in config.entries()} == {
        e.name: sample(e) for e in config.entries()
    }


def test_readme_table_is_the_rendered_one():
    """Regenerate with: python -m ncf_core hyperparameters (paste it over docs/hyperparameters.md's table)."""
    lines = (ROOT / "docs" / "hyperparameters.md").read_text().splitlines()
    header = config.hyperparameter_table().splitlines()[0]
    assert lines.count(header) == 1
    table = takewhile(lambda line: line.startswith("|"), lines[lines.index(header) :])
    assert "\n".join(table) + "\n" == config.hyperparameter_table()


@pytest.mark.parametrize("e", HYPERPARAMETER_ENTRIES, ids=lambda e: e.name)
def test_each_default_as_sent_parses_back_to_the_default(e):
    """What a pipeline parameter defaults to (a string, as SageMaker sends it) means the schema default."""
    text = config.default_as_sent(e)
    assert isinstance(text, str)
    assert parsed(hyperparameters.parse({e.hyperparameter: text}), e) == e.default
