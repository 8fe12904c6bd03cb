"""A tiny Label Studio stand-in on 127.0.0.1 that records every request reaching it (method, path,
headers, body) and lists whatever tasks a test gives it; everything else is a 404."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class FakeLabelStudio:
    def __init__(self, tasks: list[dict] | None = None):
        self.tasks = tasks or []  # what GET /api/tasks/ lists (page 1; later pages are empty)
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> dict:
                length = int(self.headers.get("Content-Length") or 0)
                entry = {"method": self.command, "path": self.path, "headers": dict(self.headers),
                         "body": self.rfile.read(length).decode("utf-8", "replace") if length else ""}
                fake.requests.append(entry)
                return entry

            def _answer(self, status: int, body) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._record()
                url = urlparse(self.path)
                if url.path == "/api/tasks/":
                    page = int(parse_qs(url.query).get("page", ["1"])[0])
                    listed = fake.tasks if page == 1 else []
                    return self._answer(200, {"tasks": listed, "total": len(fake.tasks)})
                self._answer(404, {"detail": "not found"})

            def do_POST(self):
                entry = self._record()
                if self.path == "/api/token/refresh/":
                    return self._answer(200, {"access": "access-from-" + str(len(entry["body"]))})
                self._answer(404, {"detail": "not found"})

            do_PATCH = do_DELETE = do_POST

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def seen(self, secret: str) -> list[dict]:
        """The recorded requests that carried ``secret`` in a header or the body."""
        return [r for r in self.requests if secret in json.dumps(r["headers"]) or secret in r["body"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def ls_task(task_id: int, annotation_id: int, text: str, label: str) -> dict:
    """A task as Label Studio's API lists it, with one annotation of the sms_spam.xml config."""
    return {"id": task_id, "data": {"text": text}, "predictions": [],
            "annotations": [{"id": annotation_id, "task": task_id, "was_cancelled": False,
                             "updated_at": "2024-01-01T00:00:00Z",
                             "result": [{"from_name": "label", "to_name": "text", "type": "choices",
                                         "value": {"choices": [label]}}]}]}
