"""Talking to Label Studio: the few API calls the learning loop makes (LabelStudioAPI, through
label-studio-sdk, which also exchanges personal access tokens) and the Authorization header for
downloading task data (LabelStudioAuth)."""
from __future__ import annotations

import json
import threading
import time

import requests

from .pacing import Pacer, pacer_for

IDS_PER_QUERY = 200  # task ids per listing query (a GET query string: servers cap its length at 8-64 KB)
ACCESS_TOKEN_REUSE_S = 240  # Label Studio's access tokens live ~5 min: refresh a little before


_COUNT = {"type": "Number", "value": 0}
ANNOTATED = {"conjunction": "or", "items": [  # Data Manager filters: a task with any annotation, skips included
    {"filter": "filter:tasks:total_annotations", "operator": "greater", **_COUNT},
    {"filter": "filter:tasks:cancelled_annotations", "operator": "greater", **_COUNT}]}
UNANNOTATED = {"conjunction": "and", "items": [
    {"filter": "filter:tasks:total_annotations", "operator": "equal", **_COUNT},
    {"filter": "filter:tasks:cancelled_annotations", "operator": "equal", **_COUNT}]}


def _stamp(epoch: float) -> str:
    """A Data Manager Datetime filter value."""
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(epoch))


def _query(*items: dict, ordering: list[str] | None = None) -> str:
    """A Data Manager query: every filter item must hold (``ordering``: e.g. ["tasks:id"])."""
    query = {"filters": {"conjunction": "and", "items": list(items)}}
    return json.dumps({**query, "ordering": ordering} if ordering else query)


def _since(field: str, operator: str, epoch: float) -> dict:
    """A Data Manager filter item on a task's created_at or updated_at."""
    return {"filter": f"filter:tasks:{field}", "operator": operator, "type": "Datetime", "value": _stamp(epoch)}


class AuthError(Exception):
    """No Authorization header could be made; str(error) says why (never the key)."""


def latest_live_annotation(annotations: list[dict] | None) -> dict | None:
    """The annotation that counts for a task: the latest one not cancelled (skipped); None if none."""
    live = [a for a in annotations or [] if not a.get("was_cancelled")]
    return max(live, key=lambda a: (a.get("updated_at") or "", a.get("id") or 0)) if live else None


class LabelStudioAPI:
    def __init__(self, url: str, api_key: str, timeout: float = 60):
        from label_studio_sdk import LabelStudio  # heavy (~1 s of imports): only processes that call the API

        # retries are the Pacer's (backoff with jitter, shared by every request to this Label Studio)
        self.client = LabelStudio(base_url=url, api_key=api_key, timeout=timeout, max_retries=0)
        # endpoints the SDK does not wrap (model versions) go through requests with the same credentials
        self._url, self._timeout = url.rstrip("/"), timeout
        self._auth = LabelStudioAuth(url, api_key, timeout=timeout)
        self.pacer: Pacer = pacer_for(self._url)  # every request: retried on 5xx, background work paced
        self._projects: dict[int, object] = {}  # project reads of this API object (one per training run)

    def annotated_tasks(self, project: int) -> list[tuple[dict, dict]]:
        """(latest live annotation, task) of every task holding an annotation: one filtered listing
        (fields=all) as long as the project's annotated tasks, not the project. Skipped-only tasks are
        listed and left out (not a label)."""
        query = json.dumps({"filters": ANNOTATED})
        return _split(self._read(lambda: list(self.client.tasks.list(project=int(project), fields="all", query=query,
                                                                     page_size=500))))[0]

    def unannotated_page(self, project: int, page: int, page_size: int = 500) -> tuple[list[dict], int]:
        """One page ({"id", "data"}, no annotations or predictions read) of the tasks without any
        annotation, and how many such tasks there are (0 past the last page)."""
        params = {"project": int(project), "page": int(page), "page_size": int(page_size),
                  "query": json.dumps({"filters": UNANNOTATED})}
        try:
            answer = self._request("GET", "/api/tasks/", params=params).json()
        except requests.HTTPError as exc:
            if exc.response is not None and exc.response.status_code == 404:  # past the last page
                return [], 0
            raise
        if isinstance(answer, list):  # older servers answer a bare list
            answer = {"tasks": answer, "total": len(answer)}
        tasks = [{"id": int(t["id"]), "data": t.get("data")} for t in answer.get("tasks") or []
                 if isinstance(t, dict) and "id" in t and not t.get("annotations")
                 and not t.get("total_annotations") and not t.get("cancelled_annotations")]
        return tasks, int(answer.get("total") or 0)

    def unannotated_tasks(self, project: int, page_size: int = 500):
        """Every task without any annotation, page by page (lists of {"id", "data"})."""
        page = 1
        while True:
            tasks, total = self.unannotated_page(project, page, page_size)
            if tasks:
                yield tasks
            if not tasks or page * page_size >= total:
                return
            page += 1

    def changed_tasks(self, project: int, since: float) -> tuple[list[tuple[dict, dict]], list[int], int | None]:
        """(labeled pairs as in tasks(), ids of every listed task, the smallest id of the tasks created after
        ``since`` or None) of the tasks Label Studio updated after ``since`` (epoch seconds): creating,
        changing and deleting annotations touch a task's updated_at. Tasks created since then are listed only
        when annotated: an import of N tasks has nothing to reconcile, and listing them with their annotations
        and predictions would cost the next run N tasks' worth of Label Studio's time."""
        # ids grow with creation: one task of the listing ordered by id, without annotations or predictions
        first = self._read(lambda: next(iter(self.client.tasks.list(
            project=int(project), fields="task_only", page_size=1,
            query=_query(_since("created_at", "greater_or_equal", since), ordering=["tasks:id"]))), None))
        updated = _since("updated_at", "greater", since)
        queries = [_query(updated, _since("created_at", "less", since))]
        if first is not None:  # the two listings part the tasks by created_at
            queries.append(_query(updated, _since("created_at", "greater_or_equal", since),
                                  {"filter": "filter:tasks:total_annotations", "operator": "greater", **_COUNT}))
        tasks = [task for query in queries for task in self._read(lambda query=query: list(self.client.tasks.list(
            project=int(project), fields="all", query=query, page_size=500)))]
        return _split(tasks)[0], [task.id for task in tasks], None if first is None else int(first.id)

    def project(self, project: int, fresh: bool = False):
        """The project's settings, read once per API object (a training run builds one): the run's
        publish and review read model_version and sampling from the same answer."""
        if fresh or int(project) not in self._projects:
            self._projects[int(project)] = self._read(lambda: self.client.projects.get(id=int(project)))
        return self._projects[int(project)]

    def project_model_version(self, project: int) -> str | None:
        return getattr(self.project(project), "model_version", None) or None

    def ml_backends(self, project: int) -> list[dict]:
        """The project's ML backends: [{"id", "title", "url", "model_version"}] (model_version: what its
        /setup answered last)."""
        answer = self._request("GET", "/api/ml/", params={"project": int(project)}).json()
        return [{k: b.get(k) for k in ("id", "title", "url", "model_version")} for b in answer
                if isinstance(b, dict)]

    def version_predictions(self, project: int, task_ids: list[int],
                            model_version: str) -> tuple[dict[int, list[int]], set[int]]:
        """({task: ids of this model version's predictions on it}, the tasks holding no other prediction),
        from one listing of just these tasks."""
        found, only = {}, set()
        for task in self._selected(project, task_ids):
            predictions = task.predictions or []
            ours = [int(i) for i in (_id_of(p) for p in predictions if _version_of(p) == model_version) if i is not None]
            if ours:
                found[int(task.id)] = ours
                if len(ours) == len(predictions):
                    only.add(int(task.id))
        return found, only

    def delete_task_predictions(self, project: int, task_ids: list[int]) -> int:
        """Delete every prediction of these tasks in one request (the Data Manager's "Delete predictions"
        action on just these tasks); returns how many went. Without ids nothing is sent: an action with no
        selection applies to every task."""
        ids = sorted({int(t) for t in task_ids})
        if not ids:
            return 0
        answer = self._request("POST", "/api/dm/actions", params={"id": "delete_tasks_predictions",
                                                                  "project": int(project)},
                               json={"selectedItems": {"all": False, "included": ids}}).json()
        return int(answer.get("processed_items", 0))

    def create_prediction(self, row: dict) -> int:
        """One prediction (task, result, score, model_version); returns its id."""
        return int(self._request("POST", "/api/predictions/", json=row, kind="create").json()["id"])

    def update_prediction(self, prediction_id: int, row: dict) -> None:
        """Replace one prediction's result, score and model version in place."""
        self._request("PATCH", f"/api/predictions/{int(prediction_id)}/",
                      json={k: row[k] for k in ("task", "result", "score", "model_version") if k in row}, kind="update")

    def delete_predictions(self, prediction_ids: list[int]) -> int:
        """Delete predictions one by one (Label Studio has no bulk delete by id); returns how many went."""
        deleted = 0
        for prediction_id in prediction_ids:
            try:
                self._request("DELETE", f"/api/predictions/{int(prediction_id)}/", kind="delete")
                deleted += 1
            except requests.HTTPError as exc:
                if exc.response is None or exc.response.status_code != 404:  # 404: gone already
                    raise
        return deleted

    def push_predictions(self, project: int, predictions: list[dict]) -> int:
        """Import prediction rows in chunks sized by time (pacing.Pacer.rows_for): each import holds Label
        Studio's database for about CHUNK_TARGET_S, and background imports leave gaps between them."""
        start = 0
        while start < len(predictions):
            chunk = predictions[start:start + self.pacer.rows_for("import")]
            self.pacer.call(lambda rows=chunk: self.client.projects.import_predictions(id=int(project), request=rows),
                            kind="import", rows=len(chunk))
            start += len(chunk)
        return len(predictions)

    def set_model_version(self, project: int, model_version: str) -> None:
        self.pacer.call(lambda: self.client.projects.update(id=int(project), model_version=model_version))
        self._remember(project, "model_version", model_version)

    def labeled_among(self, project: int, task_ids: list[int]) -> list[tuple[dict, dict]]:
        """Labeled pairs as in tasks() of just these tasks (one listing per IDS_PER_QUERY)."""
        return _split(list(self._selected(project, task_ids)))[0]

    def tasks_with_prediction(self, project: int, task_ids: list[int], model_version: str) -> set[int]:
        """Which of these tasks hold a prediction of this model version (one listing of just them)."""
        return {task.id for task in self._selected(project, task_ids)
                if any(_version_of(p) == model_version for p in task.predictions or [])}

    def _selected(self, project: int, task_ids: list[int]):
        """The listed tasks (fields=all), IDS_PER_QUERY per listing."""
        ids = [int(t) for t in task_ids]
        for start in range(0, len(ids), IDS_PER_QUERY):  # the ids travel in the URL: keep it short
            selected = json.dumps({"selectedItems": {"all": False, "included": ids[start:start + IDS_PER_QUERY]}})
            yield from self._read(lambda query=selected: list(self.client.tasks.list(
                project=int(project), fields="all", query=query, page_size=500)))

    def model_versions(self, project: int) -> dict[str, int]:
        """{model_version: number of predictions} of the project's predictions."""
        return self._request("GET", f"/api/projects/{int(project)}/model-versions/").json()

    def delete_model_version(self, project: int, model_version: str, shown: str | None = None) -> int:
        """Delete every prediction of one model version in one request; returns how many went.

        Label Studio 1.23.2 (Project.delete_predictions) also clears the project's model version when it
        names an ML backend, whatever version is deleted, which turns uncertainty sampling into random
        sampling. ``shown``: the project's model version, set again right after the deletion."""
        answer = self._request("DELETE", f"/api/projects/{int(project)}/model-versions/",
                               json={"model_version": model_version}).json()
        if shown and shown != model_version:
            self.set_model_version(project, shown)
        return int(answer.get("deleted_predictions", 0)) if isinstance(answer, dict) else 0

    def _request(self, method: str, path: str, kind: str | None = None, **kwargs) -> requests.Response:
        def send() -> requests.Response:
            try:
                headers = self._auth.headers()
            except AuthError as exc:
                raise RuntimeError(f"Label Studio API: {exc}") from None
            resp = requests.request(method, self._url + path, headers=headers, timeout=self._timeout, **kwargs)
            resp.raise_for_status()
            return resp

        return self.pacer.call(send, write=method != "GET", kind=kind)

    def _read(self, fn):
        return self.pacer.call(fn, write=False)

    def sampling(self, project: int) -> str | None:
        return getattr(self.project(project), "sampling", None)

    def set_sampling(self, project: int, sampling: str) -> None:
        self.pacer.call(lambda: self.client.projects.update(id=int(project), sampling=sampling))
        self._remember(project, "sampling", sampling)

    def _remember(self, project: int, field: str, value) -> None:
        """Keep the project read by this object true after our own change (or forget it)."""
        try:  # the SDK's project is a frozen pydantic model: a copy with the change
            self._projects[int(project)] = self._projects[int(project)].model_copy(update={field: value})
        except Exception:  # not read yet, or not a pydantic model: the next use reads it again
            self._projects.pop(int(project), None)

    def ensure_view(self, project: int, title: str, ordering: list[str], filters: dict | None = None,
                    renames: str | None = None) -> str:
        """A Data Manager tab with this title, ordered as given; created once, left alone after
        (the user may edit it). ``renames``: a title prefix: a tab whose title starts with it (a count in
        the title that changed) is renamed to ``title``, nothing else changed. Returns "created", "exists"
        or "renamed"."""
        for view in self._read(lambda: self.client.views.list(project=int(project))):
            data = view.data if isinstance(view.data, dict) else {}
            if data.get("title") == title:
                return "exists"
            if renames and str(data.get("title") or "").startswith(renames):
                self.pacer.call(lambda: self.client.views.update(str(view.id), project=int(project),
                                                                  data={**data, "title": title}))
                return "renamed"
        data = {"title": title, "ordering": ordering}
        if filters:
            data["filters"] = filters
        self.pacer.call(lambda: self.client.views.create(project=int(project), data=data))
        return "created"


def _split(tasks) -> tuple[list[tuple[dict, dict]], list[dict]]:
    """(labeled, unlabeled): (latest live annotation, task) pairs, and tasks without any annotation
    (a task whose only annotations are skips is neither: not a label, not to be served again)."""
    labeled, unlabeled = [], []
    for task in tasks:
        task_dict = {"id": task.id, "data": task.data}
        latest = latest_live_annotation(task.annotations)
        if latest is not None:
            labeled.append((latest, task_dict))
        elif not (task.annotations or []):
            unlabeled.append(task_dict)
    return labeled, unlabeled


def _id_of(prediction) -> int | None:
    return prediction.get("id") if isinstance(prediction, dict) else getattr(prediction, "id", None)


def _version_of(prediction) -> str | None:
    return prediction.get("model_version") if isinstance(prediction, dict) else getattr(prediction, "model_version", None)


def is_personal_access_token(token: str) -> bool:
    # Personal access tokens are JWT refresh tokens; legacy tokens are 40 hex chars.
    return token.count(".") == 2 and len(token) > 60


class LabelStudioAuth:
    """Authorization header for downloads from Label Studio, for legacy tokens ("Token <key>") and
    personal access tokens (exchanged for a short-lived "Bearer <access>").

    Hand-written rather than label-studio-sdk's exchange: the SDK keeps it behind a private member
    (LabelStudio._client_wrapper) and cannot force a refresh after a 401 (it trusts the token's exp).
    """

    def __init__(self, url: str | None, api_key: str | None, timeout: float = 10.0,
                 session: requests.Session | None = None):
        self.url = url.rstrip("/") if url else None
        self.api_key = api_key
        self.timeout = timeout
        self._session = session or requests.Session()
        self._access: str | None = None
        self._access_expires = 0.0
        self._lock = threading.Lock()

    def headers(self, force_refresh: bool = False) -> dict:
        """{"Authorization": ...}, or {} without an API key. Raises AuthError if an exchange fails."""
        if not self.api_key:
            return {}
        if not is_personal_access_token(self.api_key):
            return {"Authorization": f"Token {self.api_key}"}
        with self._lock:
            if force_refresh or not self._access or time.time() > self._access_expires:
                self._access = self._exchange()
                self._access_expires = time.time() + ACCESS_TOKEN_REUSE_S
            return {"Authorization": f"Bearer {self._access}"}

    def _exchange(self) -> str:
        if not self.url:
            raise AuthError("LABEL_STUDIO_URL is required to use a personal access token")
        try:
            resp = self._session.post(f"{self.url}/api/token/refresh/", json={"refresh": self.api_key},
                                      allow_redirects=False,  # a 307/308 would resend the token elsewhere
                                      timeout=self.timeout)
        except requests.RequestException as exc:
            raise AuthError(f"token refresh failed: {type(exc).__name__}") from None
        access = _access_token(resp) if resp.status_code == 200 else None
        if access is None:
            raise AuthError(f"token refresh failed: HTTP {resp.status_code} (is LABEL_STUDIO_API_KEY valid?)")
        return access


def _access_token(resp: requests.Response) -> str | None:
    try:
        body = resp.json()
    except ValueError:  # not JSON: a proxy's error page
        return None
    access = body.get("access") if isinstance(body, dict) else None
    return access if isinstance(access, str) else None
