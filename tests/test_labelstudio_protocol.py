"""Label Studio's wire formats (backend.labelstudio.protocol) and the download auth header (client)."""
import json as jsonlib

import pytest
import requests
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from backend.labelstudio.client import AuthError, LabelStudioAuth, latest_live_annotation
from backend.labelstudio.protocol import (IgnoredEvent, ProtocolError, annotation_fields, choice_region,
                                          parse_webhook, prediction, project_id, task_id)
from tests.helpers import label_config

SMS_CONFIG = label_config("sms_spam.xml")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


@pytest.mark.parametrize("raw, expected", [
    ("12.1712345678", "12"), ("12", "12"), (12, "12"), (" 7 .x", "7"), ("007", "7"), (None, "default"),
    ("", "default"), ("9" * 19, "9" * 19),
])
def test_project_id_accepts_label_studio_forms(raw, expected):
    assert project_id(raw) == expected


@pytest.mark.parametrize("raw", ["../etc", "a b", "a" * 65, ".5", "1/2", {"id": 1}, [1], "-3", "x;y", "abc", True,
                                 "9" * 20, 1.5,
                                 # not ASCII: int() reads "１" as 1, so each would shadow another project
                                 "\uff11", "\u0661\u0662", "\uff15", "\u216b", "\u00b2", "1\u0661"])
def test_project_id_refuses_anything_else(raw):
    with pytest.raises(ProtocolError, match="is not a Label Studio project id"):
        project_id(raw)


def test_task_id_is_an_integer_or_none():
    assert [task_id(t) for t in ({"id": 5}, {"id": "5"}, {"id": True}, {}, None, [1])] == [5, None, None, None, None,
                                                                                          None]


def test_annotation_fields_from_a_webhook_and_from_the_api():
    annotation = {"id": "3", "task": 9, "was_cancelled": 0,
                  "result": [{"from_name": "c", "type": "choices", "value": {"choices": ["spam"]}},
                             {"from_name": "c", "type": "choices", "value": ["garbled"]}]}
    assert annotation_fields(annotation, {"id": 9, "data": {"text": "hi"}}) == (3, 9, {"text": "hi"},
                                                                                {"c": ["spam"]}, False, False)
    # Label Studio's ground-truth mark makes the annotation a test item (only a real true counts)
    assert annotation_fields({**annotation, "ground_truth": True}, {"id": 9}).ground_truth is True
    assert annotation_fields({**annotation, "ground_truth": "false"}, {"id": 9}).ground_truth is False
    # a task given only by the annotation's "task" (webhook without task), a skipped annotation
    fields = annotation_fields({"id": 4, "task": 10, "was_cancelled": True}, {})
    assert (fields.task_id, fields.data, fields.labels, fields.cancelled) == (10, {}, {}, True)
    garbled = [({"task": 1}, {}), ({"id": 1}, {}), ({"id": "x", "task": 1}, {}), ({"id": [1]}, {"id": 1})]
    for annotation, task in garbled:
        with pytest.raises((KeyError, ValueError, TypeError)):
            annotation_fields(annotation, task)


def test_prediction_dicts_are_what_label_studio_reads():
    region = choice_region("label", "text", ["spam"], 0.75)
    assert region == {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["spam"]},
                      "score": 0.75}
    assert prediction([region], 0.25, "enc/v1") == {"result": [region], "score": 0.25, "model_version": "enc/v1"}


def test_parse_webhook_reads_the_payloads_label_studio_sends():
    event = parse_webhook({"action": "ANNOTATION_CREATED", "project": {"id": 4, "label_config": SMS_CONFIG},
                           "annotation": {"id": 1, "task": 2}, "task": {"id": 2, "data": {"text": "x"}}})
    assert (event.action, event.project, event.label_config) == ("ANNOTATION_CREATED", "4", SMS_CONFIG)
    assert event.annotation == {"id": 1, "task": 2} and event.task == {"id": 2, "data": {"text": "x"}}
    deleted = parse_webhook({"action": "ANNOTATIONS_DELETED", "project": "4.171",
                             "annotations": [{"id": 5}, {"id": 6}, {"no": "id"}, "junk"]})
    assert (deleted.project, deleted.label_config, deleted.deleted_ids) == ("4", None, [5, 6])
    assert parse_webhook({"action": "START_TRAINING", "project": 4}).deleted_ids == []
    # a config we could not serve is dropped: it must not replace a good one
    unservable = parse_webhook({"action": "START_TRAINING", "project": {"id": 4, "label_config": "<View"}})
    assert unservable.label_config is None
    assert parse_webhook({"action": "START_TRAINING", "project": {"label_config": 3}}).project == "default"


@pytest.mark.parametrize("body, error, message", [
    ({"action": "PROJECT_UPDATED", "project": 1}, IgnoredEvent, "unknown event 'PROJECT_UPDATED'"),
    ({"project": 1}, IgnoredEvent, "unknown event None"),
    ({"action": ["ANNOTATION_CREATED"]}, IgnoredEvent, "unknown event"),
    ({"action": "ANNOTATION_CREATED"}, ProtocolError, "webhook payload has no project"),
    ({"action": "ANNOTATION_CREATED", "project": ""}, ProtocolError, "webhook payload has no project"),
    ({"action": "ANNOTATION_CREATED", "project": {"id": "../x"}}, ProtocolError, "not a Label Studio project id"),
    ([1, 2], ProtocolError, "JSON object"),
])
def test_parse_webhook_refuses_garbled_payloads(body, error, message):
    with pytest.raises(error, match=message):
        parse_webhook(body)


def test_garbled_deleted_annotations_fail_when_read():
    # as before the refactor: the recording step catches the TypeError and asks for a reconciling run
    event = parse_webhook({"action": "ANNOTATIONS_DELETED", "project": 1, "annotations": 5})
    with pytest.raises(TypeError):
        event.deleted_ids


@hsettings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.fixed_dictionaries({}, optional={
    "action": st.sampled_from(["ANNOTATION_CREATED", "ANNOTATIONS_DELETED", "START_TRAINING"]) | json_values,
    "project": st.fixed_dictionaries({"id": st.integers(1, 5)}, optional={"label_config": json_values}) | json_values,
    "annotation": json_values, "task": json_values, "annotations": json_values}) | json_values)
def test_fuzzed_webhooks_fail_only_in_the_documented_ways(body):
    try:
        event = parse_webhook(body)
    except ProtocolError:
        return
    try:
        event.deleted_ids
        if isinstance(event.annotation, dict):
            annotation_fields(event.annotation, event.task if isinstance(event.task, dict) else {})
    except (KeyError, ValueError, TypeError, OverflowError):
        pass  # the recording step turns these into a warning and a reconciling run


def test_latest_live_annotation_skips_cancelled_ones():
    annotations = [{"id": 1, "updated_at": "2024-01-02"}, {"id": 2, "updated_at": "2024-01-03", "was_cancelled": True},
                   {"id": 3, "updated_at": "2024-01-01"}]
    assert latest_live_annotation(annotations)["id"] == 1
    assert latest_live_annotation([{"id": 4, "was_cancelled": True}]) is None and latest_live_annotation(None) is None


class _Session:
    """Stands in for requests.Session: answers token refreshes, counts them."""

    def __init__(self, status=200, body=None, error=None):
        self.status, self.body, self.error, self.calls = status, body, error, []

    def post(self, url, json, timeout, allow_redirects=True):
        assert allow_redirects is False  # a 307/308 would carry the token to the Location
        self.calls.append((url, json, timeout))
        if self.error:
            raise self.error
        response = requests.Response()
        response.status_code = self.status
        response._content = self.body if isinstance(self.body, bytes) else jsonlib.dumps(self.body).encode()
        return response


PAT = "eyJhbGciOiJIUzI1NiJ9." + "x" * 60 + ".sig"


def test_legacy_token_and_no_key():
    assert LabelStudioAuth("http://ls", "0123abcd" * 5, 5).headers() == {"Authorization": "Token " + "0123abcd" * 5}
    assert LabelStudioAuth("http://ls", None, 5).headers() == {}


def test_personal_access_token_is_exchanged_once_and_on_demand():
    session = _Session(body={"access": "acc-1"})
    auth = LabelStudioAuth("http://ls/", PAT, 5, session=session)
    assert auth.headers() == {"Authorization": "Bearer acc-1"} and auth.headers()["Authorization"] == "Bearer acc-1"
    assert session.calls == [("http://ls/api/token/refresh/", {"refresh": PAT}, 5)]
    session.body = {"access": "acc-2"}
    assert auth.headers(force_refresh=True) == {"Authorization": "Bearer acc-2"} and len(session.calls) == 2


@pytest.mark.parametrize("url, session, message", [
    (None, _Session(), "LABEL_STUDIO_URL is required"),
    ("http://ls", _Session(status=401, body={"detail": "no"}), "HTTP 401"),
    ("http://ls", _Session(body=b"<html>proxy</html>"), "HTTP 200"),
    ("http://ls", _Session(body=["access"]), "HTTP 200"),
    ("http://ls", _Session(error=requests.ConnectionError("refused")), "ConnectionError"),
])
def test_failed_exchange_is_an_auth_error_without_the_key(url, session, message):
    with pytest.raises(AuthError, match=message) as failure:
        LabelStudioAuth(url, PAT, 5, session=session).headers()
    assert PAT not in str(failure.value)
