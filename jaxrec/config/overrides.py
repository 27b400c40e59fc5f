"""Building and changing a `Config`: `--set section.field=value` overrides, dicts (config.json), model switches.

A value from the command line is coerced by its field's type; an unknown key, or a value that does not
parse as the field's type, is a `ConfigError` that names it. The model section's keys are those of the
class `model.name` picks: setting `model.name` switches the class (`switch_model`).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable
from typing import Any

from jaxrec.config.model import ConfigError, ModelConfigBase, config_class_of, registered_config_classes
from jaxrec.config.sections import DEFAULT_MODEL, Config

ORDERED_INT_TUPLES = ("ctr.mlp", "ctr.attention_mlp")  # integer lists kept in the order given (not sorted like ks)

# The keys of the single, flat model section that jaxrec wrote to config.json before each model had its own
# config class: every model's keys in one. Such a config.json cannot be read back (see `from_dict`).
FLAT_MODEL_KEYS = frozenset(
    "name max_len hidden num_blocks num_heads dropout attention_dropout attention shared_output_embedding "
    "embedding_init mask_prob output_head attention_projection positions loss num_negatives gbce_t gbce_negatives "
    "ce_chunk event_features time_periods num_actions num_surfaces feature_dim item_tower sampled_negatives "
    "examples_per_user history_window tower_layers tower_width user_features".split()
)


def model_config(name: str, **fields: Any) -> ModelConfigBase:
    """Model `name`'s config (its own class) with `fields` set; a field the class lacks is a ConfigError."""
    cls = config_class_of(name)
    unknown = sorted(set(fields) - _field_names(cls))
    if unknown:
        listed = ", ".join(f"model.{key}" for key in unknown)
        raise ConfigError(f"{listed}: {_not_a_key_message(cls, name, unknown)}")
    return cls(name=name, **fields)


def _field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _not_a_key_message(cls, name: str, keys: list[str]) -> str:
    """'not a key of model <name> (<Class>); its keys: ...', and which models have `keys`."""
    known = ", ".join(f.name for f in dataclasses.fields(cls))
    message = f"{'not a key' if len(keys) == 1 else 'not keys'} of model {name} ({cls.__name__}); its keys: {known}"
    owners = [other for other, config in registered_config_classes().items() if set(keys) <= _field_names(config)]
    if owners:
        message += f"; {'a key' if len(keys) == 1 else 'keys'} of {', '.join(owners)} (model.name)"
    return message


def switch_model(model: ModelConfigBase, name: str) -> ModelConfigBase:
    """`model` as model `name`'s config: the fields both classes have keep their values.

    A field `name`'s class lacks must be at its default (else ConfigError naming it): switching never
    drops a setting silently.
    """
    cls = config_class_of(name)
    keep = _field_names(cls)
    dropped = [
        f"model.{f.name}={getattr(model, f.name)!r}"
        for f in dataclasses.fields(model)
        if f.name not in keep and getattr(model, f.name) != _default(f)
    ]
    if dropped:
        raise ConfigError(
            f"model.name={name}: {', '.join(dropped)} (set for {model.name}) is not a key of {name} "
            f"({cls.__name__}); leave it at its default"
        )
    values = {f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.name in keep}
    return cls(**{**values, "name": name})


def _coerce(value: str, field_type: Any, key: str) -> Any:
    """Parses the command-line string `value` as `field_type`."""
    if field_type is bool:
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected a boolean (true/false), got {value!r}")
    if field_type in (int, float):
        try:
            return field_type(value)
        except ValueError:
            raise ConfigError(f"{key}: expected {field_type.__name__}, got {value!r}") from None
    if field_type is str:
        return value
    if key in ORDERED_INT_TUPLES:  # layer widths: order matters and repeats are allowed
        try:
            return tuple(int(part) for part in value.split(",") if part.strip())
        except ValueError:
            raise ConfigError(f"{key}: expected comma-separated integers, got {value!r}") from None
    if field_type == tuple[int, ...]:
        return parse_ks(value, key)
    if field_type in (tuple[str, ...], tuple[float, ...]):
        parts = tuple(part.strip() for part in value.split(",") if part.strip())
        if field_type == tuple[str, ...]:
            return parts
        try:
            return tuple(float(part) for part in parts)
        except ValueError:
            raise ConfigError(f"{key}: expected comma-separated numbers, got {value!r}") from None
    raise ConfigError(f"{key}: fields of type {field_type} cannot be set from the command line")


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def override(cfg: Config, key: str, value: str) -> Config:
    """Returns `cfg` with `section.field` set to `value` (a string, coerced by type).

    `model.name` switches the model's config class (`switch_model`); the other model keys are those of
    the current model's class.
    """
    parts = key.split(".")
    if len(parts) != 2:
        raise ConfigError(f"config key {key!r}: expected section.field, e.g. train.num_epochs")
    section_name, field_name = parts
    section_types = _field_types(Config)
    if section_name not in section_types:
        raise ConfigError(f"unknown config section {section_name!r} in {key!r}; known: {', '.join(section_types)}")
    section = getattr(cfg, section_name)
    if section_name == "model" and field_name == "name":
        return dataclasses.replace(cfg, model=switch_model(section, value.strip()))
    types_ = _field_types(type(section))
    if field_name not in types_:
        if section_name == "model":
            raise ConfigError(
                f"unknown config key {key!r}: {_not_a_key_message(type(section), section.name, [field_name])}"
            )
        raise ConfigError(f"unknown config key {key!r}; known in {section_name}: {', '.join(types_)}")
    new_value = _coerce(value, types_[field_name], key)
    return dataclasses.replace(cfg, **{section_name: dataclasses.replace(section, **{field_name: new_value})})


def apply_overrides(cfg: Config, assignments: list[str]) -> Config:
    """Applies `key=value` strings in order, except that `model.name` comes first: it picks the class
    whose keys the other `model.*` assignments set, wherever it stands on the command line."""
    pairs = []
    for assignment in assignments:
        if "=" not in assignment:
            raise ConfigError(f"--set {assignment!r}: expected key=value")
        key, value = assignment.split("=", 1)
        pairs.append((key.strip(), value))
    for key, value in sorted(pairs, key=lambda pair: pair[0] != "model.name"):  # a stable sort
        cfg = override(cfg, key, value)
    return cfg


def unused_settings(cfg: Config, keys: Iterable[str]) -> list[str]:
    """Of the `section.field` keys, those whose value in `cfg` differs from the field's default.

    A model key that the current model's class does not have is not set, so never listed; any other
    unknown key is a ConfigError.
    """
    changed = []
    for key in keys:
        section_name, _, field_name = key.partition(".")
        if section_name not in _field_types(Config):
            raise ConfigError(f"unknown config section {section_name!r} in {key!r}")
        section = getattr(cfg, section_name)
        fields = {f.name: f for f in dataclasses.fields(section)}
        if field_name not in fields:
            if section_name == "model":
                continue
            raise ConfigError(f"unknown config key {key!r}; known in {section_name}: {', '.join(fields)}")
        if getattr(section, field_name) != _default(fields[field_name]):
            changed.append(key)
    return changed


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _model_from_dict(raw: dict[str, Any]) -> ModelConfigBase:
    name = raw.get("name", DEFAULT_MODEL)
    cls = config_class_of(name)
    unknown = sorted(set(raw) - _field_names(cls))
    if unknown and set(unknown) <= FLAT_MODEL_KEYS:
        shown = ", ".join(unknown[:4]) + (f" and {len(unknown) - 4} more" if len(unknown) > 4 else "")
        raise ConfigError(
            f"model section: {shown} are not keys of model {name} ({cls.__name__}): this config.json was written "
            "by an earlier jaxrec with a flat model section (every model's keys in one)"
        )
    if unknown:
        raise ConfigError(f"unknown config keys in model ({name}, {cls.__name__}): {', '.join(unknown)}")
    return cls(**raw)


def from_dict(d: dict[str, Any]) -> Config:
    """Rebuilds a Config from `to_dict` output; unknown keys are errors. `model.name` picks the model's class."""
    sections = {}
    for field in dataclasses.fields(Config):
        name = field.name
        raw = dict(d.get(name, {}))
        for key, value in raw.items():
            if isinstance(value, list):  # JSON has no tuples
                raw[key] = tuple(value)
        if name == "model":
            sections[name] = _model_from_dict(raw)
            continue
        cls = _field_types(Config)[name]
        unknown = set(raw) - _field_names(cls)
        if unknown:
            raise ConfigError(f"unknown config keys in {name}: {', '.join(sorted(unknown))}")
        sections[name] = cls(**raw)
    unknown_sections = set(d) - set(sections)
    if unknown_sections:
        raise ConfigError(f"unknown config sections: {', '.join(sorted(unknown_sections))}")
    return Config(**sections)


def parse_ks(ks: str, key: str = "eval.ks") -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(k) for k in ks.split(",") if k.strip()}))
    except ValueError:
        raise ConfigError(f"{key}: expected comma-separated integers, got {ks!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{key}: expected positive integers, got {ks!r}")
    return values
