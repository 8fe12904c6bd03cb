"""The few Label Studio API calls the learning loop makes, through label-studio-sdk
(which also exchanges personal access tokens for access tokens)."""
from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class LabelStudioAPI:
    def __init__(self, url: str, api_key: str):
        from label_studio_sdk import LabelStudio

        self.client = LabelStudio(base_url=url, api_key=api_key, timeout=60)

    def _all_tasks(self, project: int):
        """Every task of the project with its annotations and predictions (paged by the SDK)."""
        return self.client.tasks.list(project=int(project), fields="all", page_size=500)

    def tasks(self, project: int) -> tuple[list[tuple[dict, dict]], list[dict]]:
        """(labeled, unlabeled): labeled = (latest live annotation, task) pairs; unlabeled = tasks."""
        labeled, unlabeled = [], []
        for task in self._all_tasks(project):
            task_dict = {"id": task.id, "data": task.data}
            live = [a for a in (task.annotations or []) if not a.get("was_cancelled")]
            if live:
                latest = max(live, key=lambda a: (a.get("updated_at") or "", a.get("id") or 0))
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

    def tasks_predicted_by(self, project: int, model_version: str) -> set[int]:
        """Ids of the project's tasks that have a prediction of this model version."""
        found = set()
        for task in self._all_tasks(project):
            for p in task.predictions or []:
                version = p.get("model_version") if isinstance(p, dict) else getattr(p, "model_version", None)
                if version == model_version:
                    found.add(task.id)
                    break
        return found

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
