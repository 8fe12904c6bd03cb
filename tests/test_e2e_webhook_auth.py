"""/webhook behind basic auth with a real Label Studio 1.23.2: the webhook Label Studio creates for the
backend carries no credentials (401, nothing recorded) until the X-Webhook-Secret header is added to
it; then annotations are recorded again (README, "Protecting /webhook")."""
import sqlite3

import pytest

from tests.helpers import BackendProcess, backend_env, label_config, wait_until
from tests.ls_server import free_port

pytestmark = pytest.mark.e2e

USER, PASSWORD, SECRET = "ls-user", "pässwört-1", "webhook-secret-0123456789"


def _choice(label):
    return [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]


def test_label_studio_webhook_needs_the_secret_header_when_basic_auth_is_on(label_studio, tmp_path):
    ls = label_studio
    env = backend_env(tmp_path, LABEL_STUDIO_URL=ls.url, LABEL_STUDIO_API_KEY=ls.create_personal_access_token(),
                      BASIC_AUTH_USER=USER, BASIC_AUTH_PASS=PASSWORD, WEBHOOK_SECRET=SECRET)
    backend = BackendProcess(env, tmp_path / "backend.log", free_port()).start()
    try:
        project = ls.create_project("webhook auth", label_config("sms_spam.xml"))
        tasks = ls.import_tasks(project, [{"text": "see you at home"}, {"text": "WINNER! claim your prize"}])
        ls.connect_ml_backend(project, backend.url, auth_method="BASIC_AUTH", basic_auth_user=USER,
                              basic_auth_pass=PASSWORD)
        (hook,) = [h for h in ls.list_webhooks(project) if h["url"] == backend.url + "/webhook"]
        assert hook["headers"] == {}  # what Label Studio creates: no basic auth, no headers

        def recorded():
            with sqlite3.connect(tmp_path / "models" / "annotations.sqlite3") as db:
                return {row[0] for row in db.execute(
                    "SELECT annotation_id FROM annotations WHERE project = ?", (str(project),))}

        first = ls.create_annotation(tasks[0], _choice("ham"))["id"]  # the webhook gets a 401
        ls.patch(f"/api/webhooks/{hook['id']}/", {"headers": {"X-Webhook-Secret": SECRET}})
        second = ls.create_annotation(tasks[1], _choice("spam"))["id"]
        wait_until(lambda: second in recorded(), timeout=30, what="the annotation sent with the secret header")
        # gunicorn writes its access log after each answer (buffered): wait for both lines
        wait_until(lambda: all(f'"POST /webhook HTTP/1.1" {code}' in (tmp_path / "backend.log").read_text()
                               for code in (401, 201)), timeout=30, what="the 401 and the 201 in the access log")
        assert first  # its event was refused; a reconciling run (Start training) brings it in
    finally:
        backend.kill()
