"""Configs to and from JSON, overrides by field name, and models bound from the data source.

:func:`to_dict` / :func:`train_config_from_dict` write and read a run's ``config.json``;
:func:`training_identity` is the part of it a resumed run must match; :func:`replace_fields`
applies flag-style overrides wherever each field lives (relying on field names being unique
across the nested configs, which :func:`check_unique_fields` checks at import); and
:func:`bind_models` fills a recipe's model names and widths from the data source.
"""

from __future__ import annotations

import dataclasses

from usae_jax.config import OptimConfig, TrainConfig, USAEConfig


def to_dict(config) -> dict:
    """A JSON-ready dict of a (nested) config."""
    return dataclasses.asdict(config)


def train_config_from_dict(data: dict) -> TrainConfig:
    """Inverse of :func:`to_dict` for :class:`TrainConfig`.

    Fields missing from ``data`` (written before they existed) take their defaults; unknown
    fields are an error naming them.
    """
    data = dict(data)
    parts = {"usae": (USAEConfig, data.pop("usae")), "optim": (OptimConfig, data.pop("optim"))}
    built = {}
    for key, (cls, values) in parts.items():
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown {key} config fields {sorted(unknown)}")
        built[key] = cls(**values)
    unknown = set(data) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f"unknown training config fields {sorted(unknown)}")
    return TrainConfig(**built, **data)


OPERATIONAL_FIELDS = (
    "data_parallel",
    "concept_parallel",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "eval_rows",
    "progress_bar",
    "steps_per_dispatch",
    "retain_freed_memory",
)
"""TrainConfig fields that change how a run is executed or reported, not what it computes: a
run may be resumed with different values of these."""


def training_identity(data: dict) -> dict:
    """The part of a config dict that must match to resume a run: every field that changes the
    math, with defaults filled in for fields the dict predates."""
    full = to_dict(train_config_from_dict(data))
    return {key: value for key, value in full.items() if key not in OPERATIONAL_FIELDS}


def _field_names(cls) -> set[str]:
    return {field.name for field in dataclasses.fields(cls)}


def check_unique_fields(*classes) -> None:
    """Raise ``TypeError`` if two of the config ``classes`` share a field name (other than the
    fields that nest them): :func:`replace_fields` routes an override by its name alone."""
    seen: dict[str, str] = {}
    for cls in classes:
        for name in _field_names(cls):
            if name in seen:
                raise TypeError(
                    f"config field {name!r} is defined by both {seen[name]} and {cls.__name__}; "
                    "replace_fields needs unique field names"
                )
            seen[name] = cls.__name__


_USAE_FIELDS = _field_names(USAEConfig)
_OPTIM_FIELDS = _field_names(OptimConfig)
check_unique_fields(USAEConfig, OptimConfig, TrainConfig)


def replace_fields(config: TrainConfig, **overrides) -> TrainConfig:
    """``config`` with the non-None ``overrides`` applied, wherever each field lives.

    ``num_steps`` replaces ``num_epochs`` (and vice versa). Validation runs again.
    """
    overrides = {key: value for key, value in overrides.items() if value is not None}
    usae = {k: v for k, v in overrides.items() if k in _USAE_FIELDS}
    optim = {k: v for k, v in overrides.items() if k in _OPTIM_FIELDS}
    train = {k: v for k, v in overrides.items() if k not in _USAE_FIELDS | _OPTIM_FIELDS}
    if "num_steps" in train:
        train["num_epochs"] = None
    elif "num_epochs" in train:
        train["num_steps"] = None
    return dataclasses.replace(
        config,
        usae=dataclasses.replace(config.usae, **usae),
        optim=dataclasses.replace(config.optim, **optim),
        **train,
    )


def bind_models(config: TrainConfig, names, widths) -> TrainConfig:
    """``config`` with the data source's models: sets ``model_names``/``widths`` of a recipe
    that left them empty, or checks that a bound config names the same models and widths.

    Raises ``ValueError`` naming the disagreement.
    """
    names, widths = tuple(names), tuple(int(w) for w in widths)
    usae = config.usae
    if not usae.is_bound:
        return dataclasses.replace(
            config, usae=dataclasses.replace(usae, model_names=names, widths=widths)
        )
    if usae.model_names != names:
        raise ValueError(f"source models {names} do not match the config's {usae.model_names}")
    for name, have, want in zip(names, widths, usae.widths, strict=True):
        if have != want:
            raise ValueError(
                f"model {name!r}: activations have width {have} but the config says {want}"
            )
    return config
