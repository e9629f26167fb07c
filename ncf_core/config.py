"""The training settings, declared and checked once: ``TrainConfig`` (the model and its training) and
``DataConfig`` (how interactions are split for evaluation).

Each field's metadata says how the outside world spells it: the ``ncf train`` flag, the SageMaker
hyperparameter and the seed workshop's aliases, choices, whether ``auto`` stands for None, and one line of
help. The CLI and the README's table are generated from ``entries()``; ``parse_hyperparameters`` turns
SageMaker's string hyperparameters into settings. Every value check is here (``validate``, and
``check_network`` / ``check_pretraining``, which ``ModelConfig`` and the training image reuse), so the
CLI, the training image, the launch script and the pipeline refuse a bad value before any data is read,
with the same message.

Imports neither torch nor numpy: the launch scripts (boto3 only) validate hyperparameters with it.
"""

from __future__ import annotations

import json
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from functools import cache
from typing import Any

from .errors import ConfigError

MODEL_TYPES: tuple[str, ...] = ("gmf", "mlp", "neumf")
# The paper's pre-training starts a NeuMF from a trained GMF and a trained MLP: the parts, named as their
# models (the sub-directories of ``pretrain_dir``, and the training image's channels that bring them).
PRETRAIN_PARTS: tuple[str, ...] = ("gmf", "mlp")
MAX_LAYERS = 8  # MLP tower depth: the first layer is factor * 2**num_layers wide
EMBEDDING_UPDATES: tuple[str, ...] = ("auto", "dense", "lazy")
PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")
# The scorer's (``ncf_core.inference``; serving's NCF_PRECISION): no fp16, which needs a loss scale to train
# and gains nothing over bf16 at inference.
SCORING_PRECISIONS = ("auto", "fp32", "bf16")
DEFAULT_TOP_K = 10  # K of HR@K / NDCG@K, and the default length of a recommendation list
NUM_EVAL_NEGATIVES = 99  # negatives each held-out item is ranked against (He et al. 2017)
PLATFORM_HP_PREFIX = "sagemaker_"  # hyperparameters starting with it belong to the SageMaker platform
AUTO = "auto"  # the hyperparameter text for None where ``auto`` is set (e.g. pretrain_alpha)
NONE = "none"  # the hyperparameter text for None elsewhere (e.g. min_rating)

_SCHEMA = "ncf_schema"  # the dataclass field metadata key
_FIELD_NAME = ""  # stands for "spelled like the field" in spec()


@dataclass(frozen=True)
class _Spec:
    help: str
    hyperparameter: str | None
    aliases: tuple[str, ...]
    flag: str
    choices: tuple[str, ...] | None
    auto: bool


def spec(
    help: str,
    *,
    hyperparameter: str | None = _FIELD_NAME,
    aliases: tuple[str, ...] = (),
    flag: str = _FIELD_NAME,
    choices: tuple[str, ...] | None = None,
    auto: bool = False,
) -> dict[str, _Spec]:
    """Field metadata. ``hyperparameter=None``: not one (the job sets it); ``auto``: "auto" means None."""
    return {_SCHEMA: _Spec(help, hyperparameter, aliases, flag, choices, auto)}


@dataclass(frozen=True)
class Entry(_Spec):
    """One setting as the CLI, the SageMaker parser and the README see it: its spec, names resolved."""

    section: type  # TrainConfig or DataConfig
    name: str  # the dataclass field
    kind: type  # int, float, str or bool (None is allowed when the default is None)
    default: Any


def check_network(model: str, factor: int, num_layers: int, dropout: float) -> None:
    """The network's shape: ``TrainConfig.validate`` checks it before any data loads, ``ModelConfig`` (a
    network being built, or read back from an artifact) with the same words."""
    if model not in MODEL_TYPES:
        raise ConfigError(f"model must be one of {', '.join(MODEL_TYPES)}, got {model!r}")
    if factor < 1:
        raise ConfigError(f"factor must be ≥ 1, got {factor}")
    if model != "gmf" and not 1 <= num_layers <= MAX_LAYERS:
        raise ConfigError(f"num_layers must be between 1 and {MAX_LAYERS}, got {num_layers}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")


def check_scoring_precision(name: str) -> str:
    """The one check of a scorer precision (the Recommender's, serving's NCF_PRECISION); returns it."""
    if name not in SCORING_PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(SCORING_PRECISIONS)}, got {name!r}")
    return name


def check_device(name: str) -> str:
    """The one check of a device name (training's ``device``, serving's NCF_DEVICE); returns it."""
    if not (name in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:[0-9]+", name)):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {name!r}")
    return name


def check_pretraining(model: str) -> None:
    """Pre-trained parts (``pretrain_dir``, the image's gmf and mlp channels, the launcher's --gmf and --mlp)
    only start a NeuMF."""
    if model != "neumf":
        raise ConfigError(
            f"pre-trained {' and '.join(PRETRAIN_PARTS)} models initialise a NeuMF model, but model={model}"
        )


@dataclass
class TrainConfig:
    """The model and how it is trained. The defaults were tuned on ML-1M with NeuMF-32: large batches with a
    higher learning rate, warmed up and linearly decayed, and decoupled weight decay per epoch, ten times
    more on the MLP part (the figures: README, "Results")."""

    model: str = field(default="neumf", metadata=spec("`gmf`, `mlp` or `neumf`", choices=MODEL_TYPES))
    factor: int = field(
        default=32, metadata=spec("predictive factors (GMF size, last MLP layer)", aliases=("factor_num",))
    )
    num_layers: int = field(default=3, metadata=spec("MLP layers (halving tower)", flag="--layers"))
    dropout: float = field(default=0.0, metadata=spec("dropout after MLP layers"))
    epochs: int = field(
        default=8,
        metadata=spec("epochs (the kept one is picked on validation)", aliases=("num_epochs",)),
    )
    batch_size: int = field(
        default=32768, metadata=spec("training batch (on small data sets pass a smaller one)")
    )
    lr: float = field(default=0.03, metadata=spec("Adam learning rate (start)", aliases=("learning_rate",)))
    num_neg: int = field(
        default=5,
        metadata=spec(
            "negatives per positive, re-sampled each epoch (the paper's 3–6; the workshop sends 4)",
            aliases=("num_ng",),
        ),
    )
    top_k: int = field(default=DEFAULT_TOP_K, metadata=spec("K of HR@K / NDCG@K"))
    seed: int = field(default=42, metadata=spec("seeds the validation split, negatives, shuffling, dropout"))
    weight_decay: float = field(
        default=50.0,
        metadata=spec(
            "decoupled (AdamW) weight decay per epoch of the GMF embeddings and the output layer: each step "
            "multiplies them by `1 − lr × weight_decay / steps_per_epoch`, every row, used or not"
        ),
    )
    mlp_weight_decay: float = field(
        default=200.0,
        metadata=spec(
            "the same for the MLP part (its embeddings and tower), which overfits at GMF's; NeuMF, MLP only"
        ),
    )
    lr_decay: float = field(
        default=0.1,
        metadata=spec("the learning rate falls linearly to `lr × lr_decay` by the last step (1 = constant)"),
    )
    warmup_steps: int = field(
        default=200,
        metadata=spec(
            "the learning rate rises linearly to `lr` over the first steps (at most a fifth of the run; 0 = "
            "none): full-size Adam steps while the embeddings are still small kill MLP units for good"
        ),
    )
    embedding_updates: str = field(
        default="auto",
        metadata=spec(
            "`dense`: Adam moves every embedding row each step; `lazy`: only the rows the step used (cost "
            "per sample independent of the catalogue; the weight decay others owe is paid when they are "
            "next used); `auto`: lazy when the tables have more rows than a batch has samples (one process)",
            choices=EMBEDDING_UPDATES,
        ),
    )
    patience: int = field(
        default=0, metadata=spec("stop after this many epochs without validation gain (0 = never)")
    )
    device: str = field(default="auto", metadata=spec("`auto` (CUDA when present), `cpu`, `cuda`, `cuda:N`"))
    precision: str = field(
        default="auto",
        metadata=spec(
            "the training step's matrix maths: `fp32` (IEEE fp32 matmuls, on CUDA too); `tf32` (fp32 "
            "tensors, CUDA matmuls on the TF32 tensor cores, as in NVIDIA's NCF figures; on a CPU the same "
            "as fp32); `bf16` (autocast; embeddings, "
            "optimiser state and the loss stay fp32); `fp16` (CUDA, with a gradient scaler); `auto`: bf16 "
            "where the hardware computes it (a CUDA device with bf16, a CPU with AMX or AVX512-BF16), else "
            "fp32",
            choices=PRECISIONS,
        ),
    )
    pretrain_dir: str | None = field(
        default=None,
        metadata=spec(
            "directory with `gmf/` and `mlp/` artifacts to start NeuMF from (the image: its channels)",
            hyperparameter=None,
        ),
    )
    pretrain_alpha: float | None = field(
        default=None,
        metadata=spec(
            "pre-training (`gmf` + `mlp` channels, `--pretrain-dir`): GMF's weight in NeuMF's output layer, "
            "0–1; `auto` picks it on validation",
            auto=True,
        ),
    )

    def validate(self) -> None:
        """Every check on the settings (``settings()`` runs it, before any data loads)."""
        check_network(self.model, self.factor, self.num_layers, self.dropout)
        if self.pretrain_dir is not None:
            check_pretraining(self.model)
        checks = [
            (self.epochs >= 1, f"epochs must be ≥ 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive number, got {self.lr}"),
            (self.num_neg >= 1, f"num_neg must be ≥ 1, got {self.num_neg}"),
            (self.top_k >= 1, f"top_k must be ≥ 1, got {self.top_k}"),
            (self.weight_decay >= 0, f"weight_decay must be ≥ 0, got {self.weight_decay}"),
            (self.mlp_weight_decay >= 0, f"mlp_weight_decay must be ≥ 0, got {self.mlp_weight_decay}"),
            (0.0 <= self.lr_decay <= 1.0, f"lr_decay must be in [0, 1], got {self.lr_decay}"),
            (self.warmup_steps >= 0, f"warmup_steps must be ≥ 0, got {self.warmup_steps}"),
            (self.patience >= 0, f"patience must be ≥ 0, got {self.patience}"),
            (
                self.embedding_updates in EMBEDDING_UPDATES,
                f"embedding_updates must be one of {', '.join(EMBEDDING_UPDATES)}, "
                f"got {self.embedding_updates!r}",
            ),
            (
                self.pretrain_alpha is None or 0.0 <= self.pretrain_alpha <= 1.0,
                f"pretrain_alpha must be in [0, 1] (or auto), got {self.pretrain_alpha}",
            ),
            (
                self.precision in PRECISIONS,
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}",
            ),
            (
                self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
                f"device must be auto, cpu or cuda[:N], got {self.device!r}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def fingerprint(self) -> dict[str, Any]:
        """Settings that must not change across a resume (epochs/patience/device may, and where the
        pre-trained start was read from: a resumed run continues from its checkpoint, not from it)."""
        d = asdict(self)
        for key in ("epochs", "patience", "device", "pretrain_dir"):
            d.pop(key)
        return d


@dataclass
class DataConfig:
    """How interactions become train / validation / test; the arguments of ``ncf_core.data.load``."""

    num_eval_negatives: int = field(
        default=NUM_EVAL_NEGATIVES,
        metadata=spec(
            "evaluation negatives per user (raw data; the NCF files bring their own)",
            hyperparameter="test_num_ng",
            flag="--test-num-ng",
        ),
    )
    min_rating: float | None = field(
        default=None, metadata=spec("raw data: keep ratings ≥ this as interactions (none: all)")
    )
    validation: bool = field(
        default=True,
        metadata=spec("hold out one item per user (validation) to pick the epoch; without, the last is kept"),
    )

    def validate(self) -> None:
        # Named as the hyperparameter (and the CLI flag): num_eval_negatives is only the Python name.
        if self.num_eval_negatives < 1:
            raise ConfigError(f"test_num_ng={self.num_eval_negatives} must be ≥ 1")


SECTIONS: tuple[type, ...] = (TrainConfig, DataConfig)


def _kind(annotation: Any) -> type:
    """``int`` for ``int``, ``float`` for ``float | None``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    return annotation


@cache
def entries() -> tuple[Entry, ...]:
    """Every setting, in declaration order: TrainConfig's fields, then DataConfig's."""
    out = []
    for section in SECTIONS:
        hints = typing.get_type_hints(section)
        for f in fields(section):
            s: _Spec = f.metadata[_SCHEMA]
            assert f.default is not MISSING, f"{section.__name__}.{f.name} needs a default"
            resolved = vars(s) | {
                "hyperparameter": f.name if s.hyperparameter == _FIELD_NAME else s.hyperparameter,
                "flag": s.flag or "--" + f.name.replace("_", "-"),
            }
            out.append(
                Entry(section=section, name=f.name, kind=_kind(hints[f.name]), default=f.default, **resolved)
            )
    return tuple(out)


@cache
def hyperparameters() -> dict[str, Entry]:
    """Every name the training image accepts (our names and the workshop's aliases) → its entry."""
    out: dict[str, Entry] = {}
    for e in entries():
        if e.hyperparameter is not None:
            for name in (e.hyperparameter, *e.aliases):
                assert name not in out, f"hyperparameter {name} declared twice"
                out[name] = e
    return out


def is_platform_key(name: str) -> bool:
    """SageMaker's own keys (``sagemaker_program``, ``sagemaker_mpi_enabled``...), never refused."""
    return name.startswith(PLATFORM_HP_PREFIX)


def unknown_hyperparameters(names: Iterable[str]) -> list[str]:
    """The names, sorted, that the image would refuse."""
    accepted = hyperparameters()
    return sorted(n for n in names if n not in accepted and not is_platform_key(n))


def decode(value: Any) -> Any:
    """Undo SageMaker's encoding of one hyperparameter: every value is a string, and SDK ≥ 2.110
    JSON-encodes them (``"256"``, ``"\\"neumf\\""``); a value that is no JSON scalar is the text itself."""
    if not isinstance(value, str):
        return value
    try:
        decoded = json.loads(value)
    except ValueError:
        return value
    return decoded if isinstance(decoded, str | int | float | bool) or decoded is None else value


def convert(name: str, raw: Any, kind: type) -> Any:
    """Hyperparameter ``name``'s value as a ``kind`` (bool, int, float or str); a ConfigError if it is not
    one."""
    value = decode(raw)
    shown = raw if isinstance(raw, str) else json.dumps(raw)
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes"):
            return True
        if text in ("false", "0", "no"):
            return False
        raise ConfigError(f"hyperparameter {name}={shown!r} is not a boolean (use true or false)")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"hyperparameter {name}={shown!r} is not an integer")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).strip())
        except ValueError:
            raise ConfigError(f"hyperparameter {name}={shown!r} is not an integer") from None
    if kind is float:
        try:
            number = float(str(value).strip()) if not isinstance(value, bool) else math.nan
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise ConfigError(f"hyperparameter {name}={shown!r} is not a number")
        return number
    return str(value).strip()


@dataclass
class Settings:
    """What a training run is told: the model and its training, and how the data is split."""

    config: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)


@cache
def _by_field() -> dict[str, Entry]:
    return {e.name: e for e in entries()}


def settings(values: Mapping[str, Any]) -> Settings:
    """Settings from values by field name (the others default), every check run: the CLI's flags and the
    parsed hyperparameters both come through here."""
    by_section: dict[type, dict[str, Any]] = {section: {} for section in SECTIONS}
    for name, value in values.items():
        by_section[_by_field()[name].section][name] = value
    out = Settings(TrainConfig(**by_section[TrainConfig]), DataConfig(**by_section[DataConfig]))
    out.config.validate()
    out.data.validate()
    return out


def parse_hyperparameters(raw: Mapping[str, Any]) -> Settings:
    """SageMaker's hyperparameters (strings, plain or JSON-encoded; our names or the workshop's aliases) as
    checked settings. Unknown names are refused with the accepted ones; ``sagemaker_*`` keys are the
    platform's and ignored. The training image, the launch script and the pipeline all call this."""
    unknown = unknown_hyperparameters(raw)
    accepted = hyperparameters()
    if unknown:
        raise ConfigError(
            f"unknown hyperparameter(s) {', '.join(unknown)}; accepted: {', '.join(sorted(accepted))}"
        )
    values: dict[str, Any] = {}
    for key, raw_value in raw.items():
        if key not in accepted:  # a platform key
            continue
        entry = accepted[key]
        null = null_text(entry)
        if null is not None and str(decode(raw_value)).strip().lower() == null:
            values[entry.name] = None
        else:
            values[entry.name] = convert(key, raw_value, entry.kind)
    return settings(values)


def null_text(e: Entry) -> str | None:
    """The text that stands for None in a hyperparameter with a None default: ``auto`` or ``none``."""
    if e.default is not None:
        return None
    return AUTO if e.auto else NONE


def default_as_sent(e: Entry) -> str:
    """The default as SageMaker sends a hyperparameter (a string the image parses back to the default):
    what a pipeline parameter defaults to, so that not overriding it means the schema's default."""
    if e.default is None:
        return str(null_text(e))
    if isinstance(e.default, bool):
        return str(e.default).lower()
    return str(e.default)


def _shown(e: Entry) -> str:
    value = e.default
    if value is None:
        return "`auto`" if e.auto else "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f"`{value}`"
    if isinstance(value, float):
        return re.sub(r"e([+-])0*(\d)", r"e\1\2", repr(value)).replace("e+", "e")  # 1e-06 → 1e-6
    return str(value)


def hyperparameter_table() -> str:
    """The README's hyperparameter table (markdown); ``python -m ncf_core hyperparameters`` prints it."""
    rows = ["| name (workshop alias) | default | meaning |", "|---|---|---|"]
    for e in entries():
        if e.hyperparameter is not None:
            aliases = f" ({', '.join(f'`{a}`' for a in e.aliases)})" if e.aliases else ""
            rows.append(f"| `{e.hyperparameter}`{aliases} | {_shown(e)} | {e.help} |")
    return "\n".join(rows) + "\n"
