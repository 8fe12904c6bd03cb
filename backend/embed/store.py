"""Embedding store on Chroma: one collection per (project, encoder), one record per task item.

Record id is "<task_id>:<field>" (field = the Label Studio object tag name, e.g. "image"), and its
metadata carries a hash of the item's source, so a task is embedded again only when its data changed.
"""
from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

logger = logging.getLogger(__name__)

_UPSERT_CHUNK = 2000
# Up to this many labeled task ids are excluded inside Chroma (a metadata `$nin` filter; SQLite caps
# the number of bound variables); more are dropped after an over-fetching query.
MAX_NIN = 5000
# An unfiltered nearest-neighbour query asks for at most this many results before it lets Chroma filter.
MAX_OVERFETCH = 20_000
# Records of labeled tasks carry {"labeled": True}; "$ne" also matches records written before the flag
# existed, so an older store needs no migration.
UNLABELED = {"labeled": {"$ne": True}}


def content_hash(value) -> str:
    return hashlib.sha1(repr(value).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def record_id(task_id, field: str) -> str:
    return f"{task_id}:{field}"


def collection_name(project: str, encoder_id: str, namespace: str = "") -> str:
    """"<namespace>.p<project>_<encoder>": the deployment's namespace (CHROMA_NAMESPACE) keeps deployments
    sharing a Chroma server apart; without one, the name collections had before namespaces existed."""
    # Chroma names: 3-512 chars of [a-zA-Z0-9._-], starting and ending alphanumeric.
    prefix = f"{namespace}." if namespace else ""
    slug = re.sub(r"[^a-zA-Z0-9._-]+", "-", f"{prefix}p{project}_{encoder_id}").strip("-._")
    if len(slug) > 200:
        slug = slug[:180] + hashlib.sha1(slug.encode()).hexdigest()[:16]
    return slug


@dataclass(frozen=True)
class HnswParams:
    """Chroma's HNSW graph for new collections (M, construction_ef: fixed once built) and its search
    breadth (search_ef: applied to existing collections too). Defaults are Chroma's own; at a million
    records recall needs a larger graph (docs/active_learning.md, "retrieval at scale")."""
    M: int = 16
    construction_ef: int = 100
    search_ef: int = 100

    def metadata(self) -> dict:
        return {"hnsw:M": self.M, "hnsw:construction_ef": self.construction_ef, "hnsw:search_ef": self.search_ef}


@dataclass
class StoredItem:
    task_id: int
    field: str
    hash: str
    embedding: np.ndarray


def open_store(*, path: Path | str | None = None, host: str | None = None, port: int = 8000, ssl: bool = False,
               auth_token: str | None = None, namespace: str = "", timeout_s: float | None = 10.0,
               hnsw: HnswParams | None = None) -> "EmbeddingStore":
    """A store on a Chroma server (host given; every call gives up after timeout_s) or on an embedded
    Chroma persisted under path. ``namespace``: this deployment's prefix of collection names; ``hnsw``:
    the index parameters of the collections it creates."""
    import chromadb

    if host:
        auth = {}
        if auth_token:  # Chroma's token provider sends "Authorization: Bearer <token>"
            auth = {"chroma_client_auth_provider": "chromadb.auth.token_authn.TokenAuthClientProvider",
                    "chroma_client_auth_credentials": auth_token}
        client = _within(timeout_s, lambda: chromadb.HttpClient(host=host, port=port, ssl=ssl,
                                                                 settings=chromadb.Settings(**auth)))
        if timeout_s:  # chromadb's httpx session waits forever: a paused server would hang every caller
            session = client._server._session
            session.timeout = httpx.Timeout(timeout_s)
            session.request = _Breaker(session.request, max(2 * timeout_s, 10.0))
        return EmbeddingStore(client, namespace, hnsw)
    if path is None:
        raise ValueError("open_store needs a path (embedded Chroma) or a host (Chroma server)")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return EmbeddingStore(chromadb.PersistentClient(path=str(path)), namespace, hnsw)


def _within(timeout_s: float | None, make):
    """make() (which talks to the server) or TimeoutError after timeout_s, e.g. against a paused server."""
    if not timeout_s:
        return make()
    box: dict = {}

    def run():
        try:
            box["value"] = make()
        except Exception as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, name="chroma-connect", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if "error" in box:
        raise box["error"]
    if "value" not in box:
        raise TimeoutError(f"the Chroma server did not answer within {timeout_s} s (CHROMA_TIMEOUT)")
    return box["value"]


class StoreUnavailable(httpx.TransportError):
    """Chroma timed out or was unreachable moments ago: calls fail at once until ``retry_s`` has passed."""


class _Breaker:
    """The Chroma session's request(): after a timeout or a connection error, every call fails at once for
    ``retry_s`` (one probe then), so a hung server costs one CHROMA_TIMEOUT, not one per call: /predict goes
    on without the cache and a training run fails (releasing its lock) instead of waiting on every call."""

    def __init__(self, request, retry_s: float):
        self._request, self.retry_s = request, retry_s
        self._down_until = 0.0
        self._lock = threading.Lock()

    def __call__(self, *args, **kwargs):
        with self._lock:
            if time.monotonic() < self._down_until:
                raise StoreUnavailable("the Chroma server timed out or was unreachable moments ago; "
                                       f"trying again within {self.retry_s:.0f} s")
        try:
            return self._request(*args, **kwargs)
        except httpx.TransportError:
            with self._lock:
                self._down_until = time.monotonic() + self.retry_s
            raise


class EmbeddingStore:
    """Cache of item embeddings. get_many() returns what is stored and still fresh; put_many() upserts."""

    def __init__(self, client, namespace: str = "", hnsw: HnswParams | None = None):
        self.client = client
        self.namespace = namespace
        self.hnsw = hnsw or HnswParams()
        self._collections: dict[str, object] = {}
        self._lock = threading.Lock()

    def collection(self, project: str, encoder_id: str):
        name = collection_name(project, encoder_id, self.namespace)
        with self._lock:
            if name not in self._collections:
                if self.namespace:
                    self._adopt_unprefixed(name, project, encoder_id)
                collection = self.client.get_or_create_collection(
                    name=name,
                    embedding_function=None,
                    metadata={"hnsw:space": "cosine", "project": str(project), "encoder": encoder_id,
                              **self.hnsw.metadata()},
                )
                try:
                    self._align_hnsw(collection)
                except Exception as exc:  # index tuning never blocks the store (e.g. an older Chroma server)
                    logger.warning("Chroma: could not apply CHROMA_HNSW_SEARCH_EF to %s: %s", name, exc)
                self._collections[name] = collection
            return self._collections[name]

    def _align_hnsw(self, collection) -> None:
        """An existing collection keeps the graph it was built with; its search breadth follows the setting."""
        hnsw = (getattr(collection, "configuration", None) or {}).get("hnsw") or {}
        if hnsw.get("ef_search") not in (None, self.hnsw.search_ef):
            collection.modify(configuration={"hnsw": {"ef_search": self.hnsw.search_ef}})
            logger.info("Chroma: %s searches with ef %d now (CHROMA_HNSW_SEARCH_EF)",
                        collection.name, self.hnsw.search_ef)
        built = (hnsw.get("max_neighbors"), hnsw.get("ef_construction"))
        if None not in built and built != (self.hnsw.M, self.hnsw.construction_ef):
            logger.warning("Chroma: %s was built with M=%s, construction_ef=%s; CHROMA_HNSW_M=%d and "
                           "CHROMA_HNSW_CONSTRUCTION_EF=%d apply to collections created from now on",
                           collection.name, *built, self.hnsw.M, self.hnsw.construction_ef)

    def _adopt_unprefixed(self, name: str, project: str, encoder_id: str) -> None:
        """Once, when CHROMA_NAMESPACE is first set: the collection written before under the name without a
        namespace is renamed to this namespace's (its embeddings kept, nothing embedded again). Reads check
        each record's content hash, so a record another deployment wrote there is embedded again, not used."""
        from chromadb.errors import ChromaError, NotFoundError

        try:
            self.client.get_collection(name)
            return  # this namespace has its collection already
        except NotFoundError:
            pass
        try:
            legacy = self.client.get_collection(collection_name(project, encoder_id))
            legacy.modify(name=name)
        except (ChromaError, ValueError):  # none to adopt, or another process renamed it first
            return
        logger.info("Chroma: collection %s renamed to %s (CHROMA_NAMESPACE)", legacy.name, name)

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

    def mark_labeled(self, project: str, encoder_id: str, field: str, task_ids, labeled: bool = True) -> None:
        """Flag the tasks' records labeled (or not), so queue searches skip them inside Chroma.
        Tasks without a record are ignored by Chroma."""
        ids = [record_id(t, field) for t in task_ids]
        coll = self.collection(project, encoder_id)
        for start in range(0, len(ids), _UPSERT_CHUNK):
            chunk = ids[start:start + _UPSERT_CHUNK]
            coll.update(ids=chunk, metadatas=[{"labeled": bool(labeled)} for _ in chunk])

    def unlabeled_index(self, project: str, encoder_id: str, field: str,
                        labeled: set[int] | None = None) -> "CollectionIndex":
        """The field's unlabeled records as a VectorIndex (keys: record ids). Given the labeled task ids,
        searches are plain HNSW queries that drop those (and other fields) from an over-fetched answer:
        a metadata filter makes Chroma check every record's metadata (0.6-0.8 s a query at 100,000
        records, against 0.02 s unfiltered). Without them, the labeled flags filter inside Chroma."""
        coll = self.collection(project, encoder_id)
        if labeled is None:
            return CollectionIndex(coll, where={"$and": [{"field": field}, UNLABELED]})
        return CollectionIndex(coll, field=field, skip={record_id(t, field) for t in labeled})

    def existing(self, project: str, encoder_id: str, ids: list[str]) -> set[str]:
        """Which of these record ids are stored (ids only: no embeddings read)."""
        found: set[str] = set()
        coll = self.collection(project, encoder_id)
        for start in range(0, len(ids), _UPSERT_CHUNK):
            found.update(coll.get(ids=ids[start:start + _UPSERT_CHUNK], include=[])["ids"])
        return found

    def embeddings(self, project: str, encoder_id: str, ids: list[str]) -> dict[str, np.ndarray]:
        """{record id: embedding} of the records that exist."""
        found: dict[str, np.ndarray] = {}
        coll = self.collection(project, encoder_id)
        for start in range(0, len(ids), _UPSERT_CHUNK):
            got = coll.get(ids=ids[start:start + _UPSERT_CHUNK], include=["embeddings"])
            found.update((rid, np.asarray(e, np.float32)) for rid, e in zip(got["ids"], got["embeddings"]))
        return found

    def sample_unlabeled(self, project: str, encoder_id: str, field: str, n: int, rng: np.random.Generator,
                         exclude: set[int] = frozenset(), runs: int = 1) -> tuple[list[int], np.ndarray]:
        """(task ids, embeddings) of up to n unlabeled records of the field, not in ``exclude``.

        Chroma has no random sample. runs=1 draws each record at a uniform random position of the
        collection and rejects labeled ones (an exactly uniform draw, for the audit sample: one query per
        record); runs > 1 reads n/runs consecutive records from each of ``runs`` random positions (cheap, nearly
        uniform: storage order is insertion order, unrelated to labels; for pair statistics)."""
        coll = self.collection(project, encoder_id)
        total = coll.count()
        if total == 0 or n <= 0:
            return [], np.zeros((0, 0), np.float32)
        per_read = 1 if runs <= 1 else max(1, -(-n // runs))
        tasks: dict[int, np.ndarray] = {}

        def take(got) -> None:
            for meta, emb in zip(got["metadatas"], got["embeddings"]):
                meta = meta or {}
                task = int(meta.get("task_id", -1))
                if meta.get("field") == field and not meta.get("labeled") and task >= 0 and task not in exclude:
                    tasks.setdefault(task, np.asarray(emb, np.float32))

        if runs > 1 and n >= total:  # the sample is everything: one pass, not reads until n that never come
            for offset in range(0, total, _UPSERT_CHUNK):
                take(coll.get(limit=_UPSERT_CHUNK, offset=offset, include=["embeddings", "metadatas"]))
        else:
            read = 0
            for _ in range(20 * -(-n // per_read) + 16):  # rejections: labeled, other fields, duplicates
                if len(tasks) >= n or (runs > 1 and read >= 2 * total):  # mostly labeled: seen enough
                    break
                read += per_read
                offset = int(rng.integers(0, max(1, total - per_read + 1)))
                take(coll.get(limit=per_read, offset=offset, include=["embeddings", "metadatas"]))
        ids = list(tasks)[:n]
        return ids, (np.stack([tasks[t] for t in ids]) if ids else np.zeros((0, 0), np.float32))

    def nearest(self, project: str, encoder_id: str, vector: np.ndarray, k: int, field: str,
                exclude: set[int] = frozenset(), total: int | None = None) -> list[tuple[int, float]]:
        """(task id, cosine similarity) of the k nearest records of ``field`` not in ``exclude``, best first.

        One HNSW query in Chroma without a metadata filter (cosine space: similarity = 1 - distance): a
        filter makes Chroma read every record's metadata (0.6-0.8 s a query at 100,000 records). Records
        of other fields and excluded tasks are dropped from an over-fetched answer, doubling while too few
        are left; past MAX_OVERFETCH results, the filtered query (``nearest_filtered``) answers instead.
        total: the collection's record count when the caller has it already (saves a count query).
        """
        collection = self.collection(project, encoder_id)
        total = collection.count() if total is None else total
        if total == 0:
            return []
        suffix = ":" + field
        n = k + min(len(exclude), 4 * k)
        while True:
            n = max(1, min(n, total))
            res = collection.query(query_embeddings=[vector.tolist()], n_results=n, include=["distances"])
            hits = []
            for rid, distance in zip(res["ids"][0], res["distances"][0]):
                task = str(rid)[:-len(suffix)] if str(rid).endswith(suffix) else None
                if task is not None and task.isdigit() and int(task) not in exclude:
                    hits.append((int(task), float(1.0 - distance)))
            if len(hits) >= k or n >= total or len(res["ids"][0]) < n:
                break
            if n >= MAX_OVERFETCH:  # mostly excluded or other fields near the query: let Chroma filter
                return self.nearest_filtered(project, encoder_id, vector, k, field, exclude, total)
            n *= 2
        hits.sort(key=lambda hit: -hit[1])
        return hits[:k]

    def nearest_filtered(self, project: str, encoder_id: str, vector: np.ndarray, k: int, field: str,
                         exclude: set[int] = frozenset(), total: int | None = None) -> list[tuple[int, float]]:
        """``nearest`` with the field (and up to MAX_NIN excluded tasks, ``$nin``) filtered inside Chroma;
        more excluded tasks are dropped after an over-fetching query."""
        collection = self.collection(project, encoder_id)
        total = collection.count() if total is None else total
        if total == 0:
            return []
        where: dict = {"field": field}
        inside = bool(exclude) and len(exclude) <= MAX_NIN
        if inside:
            where = {"$and": [where, {"task_id": {"$nin": sorted(exclude)}}]}
        n = k if inside or not exclude else min(total, k + min(len(exclude), 4 * k))
        while True:
            n = max(1, min(n, total))
            res = collection.query(query_embeddings=[vector.tolist()], n_results=n, where=where,
                                   include=["distances", "metadatas"])
            hits = []
            for meta, distance in zip(res["metadatas"][0], res["distances"][0]):
                task = int((meta or {}).get("task_id", -1))
                if task >= 0 and task not in exclude:
                    hits.append((task, float(1.0 - distance)))
            if len(hits) >= k or n >= total or len(res["ids"][0]) < n:
                break
            n *= 2  # too many of the nearest were labeled: look further
        hits.sort(key=lambda hit: -hit[1])
        return hits[:k]


class CollectionIndex:
    """A Chroma collection as a VectorIndex (cosine space, HNSW: sub-linear). Labeled items are removed
    either by a metadata filter (``where``, e.g. {"labeled": False} if the store keeps such a flag) or,
    by default, by over-fetching and dropping ids in ``exclude``."""

    def __init__(self, collection, where: dict | None = None, overfetch_cap: int = 2000, field: str | None = None,
                 skip: set[str] = frozenset(), max_fetch: int = 8192):
        self.collection = collection
        self.where = where
        self.overfetch_cap = overfetch_cap
        self.field = field  # keep only records of this field (ids "<task>:<field>")
        self.skip = skip  # record ids never returned (labeled tasks)
        self.max_fetch = max_fetch  # the most results one search asks for while over-fetching
        self._total: int | None = None

    def search(self, direction, m, exclude=None):
        exclude = set(exclude or ()) | self.skip if self.skip else (exclude or set())
        if self._total is None:
            self._total = self.collection.count()
        suffix = None if self.field is None else ":" + self.field
        n = m + min(len(exclude), self.overfetch_cap, max(m, 1) * 4)
        while True:  # labeled items crowd the boundaries the queue searches: ask for more until m are left
            n = int(max(1, min(n, self._total)))
            kwargs = {"query_embeddings": [_unit(np.asarray(direction, np.float32).ravel()).tolist()],
                      "n_results": n, "include": ["embeddings"]}
            if self.where:
                kwargs["where"] = self.where
            res = self.collection.query(**kwargs)
            ids, embs = res["ids"][0], res["embeddings"][0]
            keep = [(i, e) for i, e in zip(ids, embs)
                    if i not in exclude and (suffix is None or str(i).endswith(suffix))][:m]
            if len(keep) >= m or len(ids) < n or n >= self._total or n >= self.max_fetch:
                break
            n *= 2
        if not keep:
            return [], np.zeros((0, 0), np.float32)
        return [i for i, _ in keep], np.asarray([e for _, e in keep], dtype=np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
