"""The one schema of training settings (ncf_core.config) and everything generated from it or checked with it:
the hyperparameter parser (the image's, the launch script's and the pipeline's), the ``ncf_core train`` CLI
and the table of docs/hyperparameters.md."""

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


def parsed(options: config.Settings, e: Entry) -> Any:
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
    assert parsed(config.parse_hyperparameters({name: encode(value)}), e) == value


def test_the_launcher_accepts_every_schema_name_and_platform_keys():
    hp = {name: as_sent(sample(e)) for name, e in config.hyperparameters().items()}
    check_hyperparameters(hp | {"sagemaker_program": "x"})


def test_unknown_names_are_refused_by_image_and_launcher():
    with pytest.raises(ConfigError, match="unknown hyperparameter"):
        config.parse_hyperparameters({"learning_rat": "0.1"})
    with pytest.raises(UsageError, match="unknown hyperparameter"):
        check_hyperparameters({"learning_rat": "0.1"})
    # what is not a hyperparameter of the image (pretrain_dir comes from its channels) is refused too
    assert config.unknown_hyperparameters(["pretrain_dir", "sagemaker_region"]) == ["pretrain_dir"]


def test_platform_keys_are_the_platforms():
    for key in (contract.PROGRAM_HP, contract.SUBMIT_DIRECTORY_HP, contract.MPI_ENABLED_HP):
        assert config.is_platform_key(key)
    assert not any(config.is_platform_key(name) for name in config.hyperparameters())


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
    assert parsed(config.parse_hyperparameters({e.hyperparameter: text}), e) == e.default


@pytest.mark.parametrize(
    ("name", "flag", "text", "message"),
    [
        ("factor", "--factor", "0", "factor must be ≥ 1, got 0"),
        ("num_layers", "--layers", "9", "num_layers must be between 1 and 8, got 9"),
        ("dropout", "--dropout", "1", "dropout must be in [0, 1), got 1.0"),
        ("lr_decay", "--lr-decay", "2", "lr_decay must be in [0, 1], got 2.0"),
    ],
)
def test_a_bad_value_is_refused_before_any_data_with_one_message_everywhere(
    tmp_path, monkeypatch, name, flag, text, message
):
    """The image, the CLI, the launch script and the pipeline all check with ncf_core.config: the same words,
    and before any data is read (the CLI's data does not even exist; the image's loader is never called)."""
    from ncf_mlops.parameters import check_value, parameters
    from ncf_sagemaker.training import job
    from tests.support.sagemaker_tree import SageMakerTree

    with pytest.raises(ConfigError) as parsed_error:
        config.parse_hyperparameters({name: text})
    assert str(parsed_error.value) == message

    # the training image's program
    tree = SageMakerTree(tmp_path / "ml")
    tree.write_config({name: text})
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tree.base))
    monkeypatch.delenv("SAGEMAKER_PROGRAM", raising=False)
    monkeypatch.setattr(job, "_configure_logging", lambda: None)
    monkeypatch.setattr(job, "load_job_data", lambda *_: pytest.fail("data loaded before the check"))
    assert job.main() == job.EXIT_FAILED
    assert (tree.output / "failure").read_text() == message

    # the launch script
    with pytest.raises(UsageError) as launcher_error:
        check_hyperparameters({name: text})
    assert str(launcher_error.value) == message

    # the pipeline's parameter check
    (parameter,) = [p for p in parameters("s3://bucket/data") if p.name == name]
    with pytest.raises(UsageError) as pipeline_error:
        check_value(parameter, text)
    assert str(pipeline_error.value) == f"--param {name}={text}: {message}"

    # the CLI, given data that does not exist
    argv = ["train", "--data", str(tmp_path / "no-such-data"), "--model-dir", str(tmp_path / "m"), flag, text]
    proc = subprocess.run([sys.executable, "-m", "ncf_core", *argv], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: {message}"


def test_pretrained_parts_start_only_a_neumf_with_one_message_everywhere(tmp_path):
    message = "pre-trained gmf and mlp models initialise a NeuMF model, but model=gmf"
    with pytest.raises(ConfigError, match=message):
        TrainConfig(model="gmf", pretrain_dir=str(tmp_path)).validate()
    with pytest.raises(UsageError, match=message):
        check_hyperparameters({"model": "gmf"}, pretrained=True)
    check_hyperparameters({"model": "gmf"})  # without pre-trained parts a GMF is fine
    check_hyperparameters({"model": "neumf"}, pretrained=True)


def test_the_launcher_sends_every_channel_of_the_image():
    from ncf_launch.train import CHANNELS, parser

    assert CHANNELS == contract.TRAINING_CHANNELS
    assert set(contract.PRETRAIN_CHANNELS) == set(config.PRETRAIN_PARTS)
    flags = {a.dest for a in parser()._actions}
    assert set(CHANNELS) <= flags
