import pytest

from backend.labelstudio.labelconfig import ConfigError, parse_label_config
from tests.helpers import LABEL_CONFIG_DIR, label_config


@pytest.mark.parametrize("path", sorted(LABEL_CONFIG_DIR.glob("*.xml")), ids=lambda p: p.name)
def test_shipped_configs_parse(path):
    parsed = parse_label_config(path.read_text())
    assert parsed.targets and all(len(t.labels) >= 2 for t in parsed.targets)


def test_image_single_choice():
    (target,) = parse_label_config(label_config("image_classification.xml")).targets
    assert (target.from_name, target.to_name, target.modality, target.data_key) == ("choice", "image", "image", "image")
    assert target.multiple is False
    assert target.outputs[:3] == ["airplane", "automobile", "bird"] and len(target.outputs) == 10
    assert target.labels[1].hint == "a car"


def test_image_multi_choice():
    (target,) = parse_label_config(label_config("image_multilabel.xml")).targets
    assert target.multiple is True and target.modality == "image"


def test_alias_is_output_and_value_is_prompt_name():
    cfg = """<View><Text name="t" value="$body" valueType="url"/>
      <Choices name="c" toName="t"><Choice value="Not spam" alias="ham"/><Choice value="spam"/></Choices></View>"""
    (target,) = parse_label_config(cfg).targets
    assert target.outputs == ["ham", "spam"]
    assert target.labels[0].names == ("Not spam", "ham")
    assert target.modality == "text" and target.data_key == "body" and target.value_is_url


def test_several_targets_and_fingerprint_changes_with_labels():
    cfg = """<View><Image name="img" value="$image"/><Text name="cap" value="$caption"/>
      <Choices name="a" toName="img"><Choice value="x"/><Choice value="y"/></Choices>
      <Choices name="b" toName="cap"><Choice value="p"/><Choice value="q"/></Choices></View>"""
    parsed = parse_label_config(cfg)
    assert [(t.from_name, t.modality) for t in parsed.targets] == [("a", "image"), ("b", "text")]
    assert parse_label_config(cfg.replace('"q"', '"r"')).fingerprint != parsed.fingerprint


@pytest.mark.parametrize("cfg, message", [
    ("", "empty"),
    ("<View><Image name='i' value='$i'/>", "not valid XML"),
    ("<View><Image name='i' value='$i'/><RectangleLabels name='r' toName='i'><Label value='a'/></RectangleLabels></View>",
     "RectangleLabels"),
    ("<View><Audio name='a' value='$a'/><Choices name='c' toName='a'><Choice value='x'/><Choice value='y'/></Choices></View>",
     "Audio"),
    ("<View><Image name='i' value='$i'/><Choices name='c' toName='i'><Choice value='only'/></Choices></View>",
     "at least two"),
])
def test_unservable_configs_raise_clear_errors(cfg, message):
    with pytest.raises(ConfigError, match=message):
        parse_label_config(cfg)
