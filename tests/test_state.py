"""backend.state beyond the annotation log: old pickles load after the package moved, a project's
rankings and sampling marker are written atomically."""
import pickle
import stat
import sys
import types

import numpy as np
import pytest

from backend.state.atomic import atomic_write_text
from backend.state.project_state import ProjectState
from backend.state.versions import RENAMED_MODULES, VersionStore, VersionUnpickler, _renamed


def test_renamed_maps_only_moved_modules():
    assert _renamed("backend.heads", "LogisticHead") == ("backend.learn.heads", "LogisticHead")
    assert _renamed("numpy", "ndarray") == ("numpy", "ndarray")
    assert RENAMED_MODULES == {"backend.heads": "backend.learn.heads"}


def test_a_version_pickled_before_the_move_loads_from_the_new_module(tmp_path, monkeypatch):
    # the heads.pkl of an old version names backend.heads.LogisticHead; craft one with stand-in modules
    # (the real backend.learn.heads may not be importable here: state must not depend on it)
    old, new = types.ModuleType("backend.heads"), types.ModuleType("backend.learn.heads")

    class OldHead:
        pass

    class NewHead:
        def predict_proba(self, X):
            return self.W

    OldHead.__module__, OldHead.__qualname__, OldHead.__name__ = "backend.heads", "LogisticHead", "LogisticHead"
    old.LogisticHead, new.LogisticHead = OldHead, NewHead
    monkeypatch.setitem(sys.modules, "backend.heads", old)
    head = OldHead()
    head.W = [0.25, 0.75]
    version = VersionStore(tmp_path).save("5", lambda n: f"enc/v{n}", {"label": head}, {})
    assert b"backend.heads" in (version.directory / "heads.pkl").read_bytes()

    monkeypatch.delitem(sys.modules, "backend.heads")
    monkeypatch.setitem(sys.modules, "backend.learn.heads", new)
    loaded = VersionStore(tmp_path).latest("5").load_heads()["label"]
    assert type(loaded) is NewHead and loaded.predict_proba(None) == [0.25, 0.75]


def test_an_old_zero_shot_head_loads_as_the_new_class(tmp_path, monkeypatch):
    heads = pytest.importorskip("backend.learn.heads")
    old = types.ModuleType("backend.heads")

    class ZeroShotHead:  # the attributes the former backend.heads.ZeroShotHead pickled
        pass

    ZeroShotHead.__module__, ZeroShotHead.__qualname__ = "backend.heads", "ZeroShotHead"
    old.ZeroShotHead = ZeroShotHead
    monkeypatch.setitem(sys.modules, "backend.heads", old)
    head = ZeroShotHead()
    head.__dict__.update(prototypes=np.eye(2, 3, dtype=np.float32), logit_scale=10.0, multiple=False,
                         relative_threshold=0.5, thresholds=None)
    VersionStore(tmp_path).save("6", str, {"label": head}, {})
    monkeypatch.delitem(sys.modules, "backend.heads")

    loaded = VersionStore(tmp_path).latest("6").load_heads()["label"]
    assert type(loaded) is heads.ZeroShotHead
    assert np.allclose(loaded.predict_proba(np.array([[1.0, 0.0, 0.0]])), heads.softmax(np.array([[10.0, 0.0]])))


def test_the_unpickler_loads_ordinary_pickles_unchanged(tmp_path):
    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps({"a": (1, 2.5, "x")}))
    with open(path, "rb") as f:
        assert VersionUnpickler(f).load() == {"a": (1, 2.5, "x")}


def test_latest_is_replaced_atomically_and_readable_by_others(tmp_path):
    store = VersionStore(tmp_path)
    store.save("1", str, {}, {})
    store.save("1", str, {}, {})
    versions = tmp_path / "projects" / "1" / "versions"
    assert (versions / "LATEST").read_text() == "2" and store.latest_number("1") == 2
    assert sorted(p.name for p in versions.iterdir()) == ["0001", "0002", "LATEST"]  # no temporary files left
    assert (versions / "LATEST").stat().st_mode & stat.S_IRGRP  # not mkstemp's 0600: workers may run as others


def test_ranking_round_trip_and_version_check(tmp_path):
    state = ProjectState(tmp_path, "3")
    assert state.ranking() is None and state.ranked_version() is None
    path = state.save_ranking("enc/v2", "boundary", {10: 0.125, 11: 0.5})
    assert path == tmp_path / "rankings" / "3.json"
    assert state.ranked_version() == "enc/v2"
    assert state.saved_priorities("enc/v2") == {10: 0.125, 11: 0.5}
    assert state.saved_priorities("enc/v1") == {}
    state.save_ranking("enc/v3", "boundary", {12: 0.0})  # a newer ranking replaces the cached one
    assert state.saved_priorities("enc/v3") == {12: 0.0}
    assert state.ranking().strategy == "boundary"
    assert sorted(p.name for p in (tmp_path / "rankings").iterdir()) == ["3.json"]


def test_unreadable_ranking_is_no_ranking(tmp_path):
    atomic_write_text(tmp_path / "rankings" / "4.json", "{half")
    state = ProjectState(tmp_path, "4")
    assert state.ranking() is None and state.saved_priorities("v") == {}


def test_sampling_marker(tmp_path):
    assert not ProjectState(tmp_path, "9").sampling_switched()
    path = ProjectState(tmp_path, "9").mark_sampling_switched("Sequential sampling")
    assert ProjectState(tmp_path, "9").sampling_switched() and not ProjectState(tmp_path, "8").sampling_switched()
    assert path == tmp_path / "rankings" / "9.sampling" and '"previous": "Sequential sampling"' in path.read_text()
