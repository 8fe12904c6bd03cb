"""Talking to Label Studio: the few API calls the learning loop makes (LabelStudioAPI, through
label-studio-sdk, which also exchanges personal access tokens) and the Authorization header for
downloading task data (LabelStudioAuth)."""
from __future__ import annotations

import json
import threading
import time

import requests

IDS_PER_QUERY = 200  # task ids per listing query (a GET query string: servers cap its length at 8-64 KB)
ACCESS_TOKEN_REUSE_S = 240  # Label Studio's access tokens live ~5 min: refresh a little before


class AuthError(Exception):
    """No Authorization header could be made; str(error) says why (never the key)."""


def latest_live_annotation(annotations: list[dict] | None) -> dict | None:
    """The annotation that counts for a task: the latest one not cancelled (skipped); None if none."""
    live = [a for a in annotations or [] if not a.get("was_cancelled")]
    return max(live, key=lambda a: (a.get("updated_at") or "", a.get("id") or 0)) if live else None


class LabelStudioAPI:
    def __init__(self, url: str, api_key: str, timeout: float = 60):
        from label_studio_sdk import LabelStudio  # heavy (~1 s of imports): only processes that call the API

        self.client = LabelStudio(base_url=url, api_key=api_key, timeout=timeout)
        # endpoints the SDK does not wrap (model versions) go through requests with the same credentials
        self._url, self._timeout = url.rstrip("/"), timeout
        self._auth = LabelStudioAuth(url, api_key, timeout=timeout)

    def _all_tasks(self, project: int):
        """Every task of the project with its annotations and predictions (paged by the SDK)."""
        return self.client.tasks.list(project=int(project), fields="all", page_size=500)

    def tasks(self, project: int) -> tuple[list[tuple[dict, dict]], list[dict]]:
        """(labeled, unlabeled): labeled = (latest live annotation, task) pairs; unlabeled = tasks."""
        labeled, unlabeled = [], []
        for task in self._all_tasks(project):
            task_dict = {"id": task.id, "data": task.data}
            latest = latest_live_annotation(task.annotations)
            if latest is not None:
                labeled.append((latest, task_dict))
            elif not (task.annotations or []):
                unlabeled.append(task_dict)
        return labeled, unlabeled

    def push_predictions(self, project: int, predictions: list[dict], chunk: int = 1000) -> int:
        for start in range(0, len(predictions), chunk):
            self.client.projects.import_predictions(id=int(project), request=predictions[start:start + chunk])
        return len(predictions)

    def set_model_version(self, project: int, model_version: str) -> None:
        self.client.projects.update(id=int(project), model_version=model_version)

    def tasks_with_prediction(self, project: int, task_ids: list[int], model_version: str) -> set[int]:
        """Which of these tasks hold a prediction of this model version (one listing of just them)."""
        found = set()
        ids = [int(t) for t in task_ids]
        for start in range(0, len(ids), IDS_PER_QUERY):  # the ids travel in the URL: keep it short
            selected = json.dumps({"selectedItems": {"all": False, "included": ids[start:start + IDS_PER_QUERY]}})
            for task in self.client.tasks.list(project=int(project), fields="all", query=selected, page_size=500):
                if any(_version_of(p) == model_version for p in task.predictions or []):
                    found.add(task.id)
        return found

    def model_versions(self, project: int) -> dict[str, int]:
        """{model_version: number of predictions} of the project's predictions."""
        return self._request("GET", f"/api/projects/{int(project)}/model-versions/").json()

    def delete_model_version(self, project: int, model_version: str) -> int:
        """Delete every prediction of one model version in one request; returns how many went."""
        answer = self._request("DELETE", f"/api/projects/{int(project)}/model-versions/",
                               json={"model_version": model_version}).json()
        return int(answer.get("deleted_predictions", 0)) if isinstance(answer, dict) else 0

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        try:
            headers = self._auth.headers()
        except AuthError as exc:
            raise RuntimeError(f"Label Studio API: {exc}") from None
        resp = requests.request(method, self._url + path, headers=headers, timeout=self._timeout, **kwargs)
        resp.raise_for_status()
        return resp

    def sampling(self, project: int) -> str | None:
        return getattr(self.client.projects.get(id=int(project)), "sampling", None)

    def set_sampling(self, project: int, sampling: str) -> None:
        self.client.projects.update(id=int(project), sampling=sampling)

    def ensure_view(self, project: int, title: str, ordering: list[str], filters: dict | None = None) -> str:
        """A Data Manager tab with this title, ordered as given; created once, left alone after
        (the user may edit it). Returns "created" or "exists"."""
        for view in self.client.views.list(project=int(project)):
            data = view.data if isinstance(view.data, dict) else {}
            if data.get("title") == title:
                return "exists"
        data = {"title": title, "ordering": ordering}
        if filters:
            data["filters"] = filters
        self.client.views.create(project=int(project), data=data)
        return "created"


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
