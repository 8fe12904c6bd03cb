"""Parse a Label Studio labeling config into the classification targets we serve.

A target is one <Choices> control bound to one <Image> or <Text> object. Parsing uses
label-studio-sdk's LabelInterface; anything we cannot serve raises ConfigError with a message
meant for the person who wrote the config.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from label_studio_sdk.label_interface import LabelInterface

SUPPORTED_OBJECTS = {"image": "image", "text": "text", "hypertext": "text", "paragraphs": None}
# <?xml version="1.0" encoding="UTF-8"?>: lxml refuses an encoding declaration in a str; the text is decoded already
XML_DECLARATION = re.compile(r"^\ufeff?\s*<\?xml\b[^>]*\?>", re.IGNORECASE)


class ConfigError(ValueError):
    """The labeling config cannot be served by this backend."""


@dataclass(frozen=True)
class ChoiceLabel:
    output: str  # what Label Studio stores in results: alias if given, else value
    names: tuple[str, ...]  # human names used in prompts: value and alias
    hint: str | None  # a free-text description, used as an extra prompt as-is

    @property
    def prompt_name(self) -> str:
        return self.names[0]


@dataclass(frozen=True)
class Target:
    from_name: str  # the <Choices> name
    to_name: str  # the <Image>/<Text> name
    modality: str  # "image" or "text"
    data_key: str  # task["data"][data_key] holds the item
    value_is_url: bool  # <Text valueType="url">: the text is fetched from a URL
    labels: tuple[ChoiceLabel, ...]
    multiple: bool

    @property
    def outputs(self) -> list[str]:
        return [label.output for label in self.labels]


@dataclass(frozen=True)
class ParsedConfig:
    targets: tuple[Target, ...]
    fingerprint: str  # changes whenever targets or labels change


def parse_label_config(config: str, max_choices: int | None = None) -> ParsedConfig:
    """The targets of a labeling config; ConfigError for one we cannot serve. ``max_choices`` caps the
    options of each <Choices> (every option costs prompt encodings when the model loads)."""
    if not isinstance(config, str) or not config.strip():
        raise ConfigError("the labeling config is empty")
    try:
        interface = LabelInterface(XML_DECLARATION.sub("", config, count=1))
    except Exception as exc:  # the SDK raises several XML/validation error types
        raise ConfigError(f"the labeling config is not valid XML: {exc}") from None

    targets = []
    skipped = []
    for control in interface.controls:
        if control.tag.lower() != "choices":
            skipped.append(f"<{control.tag} name={control.name!r}>")
            continue
        if len(control.to_name) > 1:  # one from_name would name several targets (heads are per from_name)
            raise ConfigError(f"<Choices name={control.name!r}> points to several objects "
                              f"(toName={','.join(control.to_name)!r}); this backend serves a <Choices> bound "
                              "to one <Image> or <Text>")
        for to_name in control.to_name:
            obj = interface.objects.get(to_name) if isinstance(interface.objects, dict) else None
            if obj is None:
                obj = next((o for o in interface.objects if o.name == to_name), None)
            if obj is None:
                raise ConfigError(f"<Choices name={control.name!r}> points to toName={to_name!r}, which does not exist")
            modality = SUPPORTED_OBJECTS.get(obj.tag.lower())
            if modality is None:
                skipped.append(f"<Choices name={control.name!r}> on <{obj.tag}>")
                continue
            if not obj.value or not obj.value.startswith("$"):
                raise ConfigError(f"<{obj.tag} name={obj.name!r}> needs value=\"$field\" to read task data")
            labels = _choice_labels(control)
            if len(labels) < 2:
                raise ConfigError(f"<Choices name={control.name!r}> needs at least two <Choice> options")
            if max_choices is not None and len(labels) > max_choices:
                raise ConfigError(f"<Choices name={control.name!r}> has {len(labels)} options; this backend "
                                  f"serves at most MAX_CHOICES={max_choices} (each option is encoded from "
                                  "several prompts when the model loads: raise MAX_CHOICES to allow more)")
            targets.append(Target(
                from_name=control.name,
                to_name=to_name,
                modality=modality,
                data_key=obj.value[1:],
                value_is_url=(obj.attr.get("valueType") or "").lower() == "url",
                labels=tuple(labels),
                multiple=(control.attr.get("choice") or "").lower() == "multiple",
            ))
    if not targets:
        what = ", ".join(skipped) if skipped else "no <Choices> tag"
        raise ConfigError(
            "this backend serves <Choices> on <Image> or <Text>; the config has " + what
        )
    fingerprint = hashlib.sha1(repr(targets).encode()).hexdigest()[:10]
    return ParsedConfig(targets=tuple(targets), fingerprint=fingerprint)


def _choice_labels(control) -> list[ChoiceLabel]:
    labels = []
    seen = set()
    attrs = control.labels_attrs or {}
    for output in control.labels or []:
        tag = attrs.get(output)
        attr = tag.attr if tag is not None else {}
        value, alias = attr.get("value"), attr.get("alias")
        names = tuple(dict.fromkeys(n.strip() for n in (value, alias, output) if n and n.strip()))
        if output in seen or not names:
            continue
        seen.add(output)
        hint = (attr.get("hint") or "").strip() or None
        labels.append(ChoiceLabel(output=output, names=names, hint=hint))
    return labels
