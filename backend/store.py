"""Embedding store on Chroma: one collection per (project, encoder), one record per task item.

Record id is "<task_id>:<field>" (field = the Label Studio object tag name, e.g. "image"), and its
metadata carries a hash of the item's source, so a task is embedded again only when its data changed.
"""
from __future__ import annotations

import hashlib
import logging
import re
import threading
from dataclasses import dataclass

import numpy as np

from .settings import Settings

logger = logging.getLogger(__name__)

_UPSERT_CHUNK = 2000


def content_hash(value) -> str:
    return hashlib.sha1(repr(value).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def record_id(task_id, field: str) -> str:
    return f"{task_id}:{field}"


def collection_name(project: str, encoder_id: str) -> str:
    # Chroma names: 3-512 chars of [a-zA-Z0-9._-], starting and ending alphanumeric.
    slug = re.sub(r"[^a-zA-Z0-9._-]+", "-", f"p{project}_{encoder_id}").strip("-._")
    if len(slug) > 200:
        slug = slug[:180] + hashlib.sha1(slug.encode()).hexdigest()[:16]
    return slug


@dataclass
class StoredItem:
    task_id: int
    field: str
    hash: str
    embedding: np.ndarray


def make_client(settings: Settings):
    import chromadb

    if settings.chroma_host:
        auth = {}
        if settings.chroma_auth_token:  # Chroma's token provider sends "Authorization: Bearer <token>"
            auth = {"chroma_client_auth_provider": "chromadb.auth.token_authn.TokenAuthClientProvider",
                    "chroma_client_auth_credentials": settings.chroma_auth_token}
        return chromadb.HttpClient(host=settings.chroma_host, port=settings.chroma_port, ssl=settings.chroma_ssl,
                                   settings=chromadb.Settings(**auth))
    path = settings.resolved_chroma_path
    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(path))


class EmbeddingStore:
    """Cache of item embeddings. get_many() returns what is stored and still fresh; put_many() upserts."""

    def __init__(self, client):
        self.client = client
        self._collections: dict[str, object] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> "EmbeddingStore":
        return cls(make_client(settings))

    def collection(self, project: str, encoder_id: str):
        name = collection_name(project, encoder_id)
        with self._lock:
            if name not in self._collections:
                self._collections[name] = self.client.get_or_create_collection(
                    name=name,
                    embedding_function=None,
                    metadata={"hnsw:space": "cosine", "project": str(project), "encoder": encoder_id},
                )
            return self._collections[name]

    def get_many(self, project: str, encoder_id: str, keys: list[tuple[int, str, str]]) -> dict[str, np.ndarray]:
        """keys: (task_id, field, hash). Returns {record_id: embedding} for records whose hash matches."""
        if not keys:
            return {}
        coll = self.collection(project, encoder_id)
        wanted = {record_id(t, f): h for t, f, h in keys}
        found: dict[str, np.ndarray] = {}
        ids = list(wanted)
        for start in range(0, len(ids), _UPSERT_CHUNK):
            got = coll.get(ids=ids[start:start + _UPSERT_CHUNK], include=["embeddings", "metadatas"])
            for rid, emb, meta in zip(got["ids"], got["embeddings"], got["metadatas"]):
                if meta and meta.get("hash") == wanted[rid]:
                    found[rid] = np.asarray(emb, dtype=np.float32)
        return found

    def put_many(self, project: str, encoder_id: str, items: list[StoredItem]) -> None:
        if not items:
            return
        coll = self.collection(project, encoder_id)
        for start in range(0, len(items), _UPSERT_CHUNK):
            chunk = items[start:start + _UPSERT_CHUNK]
            coll.upsert(
                ids=[record_id(i.task_id, i.field) for i in chunk],
                embeddings=np.stack([i.embedding for i in chunk]).astype(np.float32),
                metadatas=[{"task_id": int(i.task_id), "field": i.field, "hash": i.hash} for i in chunk],
            )

    def count(self, project: str, encoder_id: str) -> int:
        return self.collection(project, encoder_id).count()
