"""Settings: where values come from, and one clear line per bad value."""
from pathlib import Path

import pytest

from backend.config import QUEUE_STRATEGIES, Settings, SettingsError, env_names


def test_code_and_a_given_mapping_never_read_the_process_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PORT", "1234")
    monkeypatch.setenv("CLIP_MODEL", "ViT-L-14")
    direct = Settings(model_dir=tmp_path, clip_pretrained="none")
    assert (direct.port, direct.clip_model, direct.model_dir) == (9090, "ViT-B-32", tmp_path)
    assert Settings.from_env({"BATCH_SIZE": "8"}).port == 9090
    assert (Settings.from_env().port, Settings.from_env().clip_model) == (1234, "ViT-L-14")


def test_blank_is_unset_except_where_blank_means_something():
    blank = Settings.from_env({name: "" for name in env_names()})
    assert (blank.port, blank.model_dir, blank.rq_queue, blank.label_studio_url) == (9090, Path("models"),
                                                                                   "clip-backend", None)
    assert blank.queue_view == "" and blank.clip_pretrained == "none"  # no Data Manager tab; no weights
    assert Settings.from_env({}).queue_view == "Boundary first"


def test_environment_values_are_normalized():
    s = Settings.from_env({"LABEL_STUDIO_HOST": "http://ls:8080/", "LOG_LEVEL": "debug", "DEVICE": "CUDA:1",
                           "QUEUE_STRATEGY": "Least-Confidence", "ALLOWED_FETCH_HOSTS": " A.com, ,*.b.org",
                           "CHROMA_SSL": " Yes ", "FETCH_TIMEOUT": "2.5", "QUEUE_VIEW": " Mine "})
    assert (s.label_studio_url, s.log_level, s.device, s.queue_strategy) == ("http://ls:8080", "DEBUG", "cuda:1",
                                                                             "least_confidence")
    assert (s.allowed_fetch_hosts, s.chroma_ssl, s.fetch_timeout_s, s.queue_view) == (("a.com", "*.b.org"), True,
                                                                                      2.5, "Mine")
    assert Settings.from_env({"LABEL_STUDIO_URL": "http://a", "LABEL_STUDIO_HOST": "http://b"}).label_studio_url == \
        "http://a"
    assert Settings.from_env({"LOCAL_FILES_DOCUMENT_ROOT": "."}).local_files_document_root == Path(".").resolve()
    assert Settings(allowed_fetch_hosts=["X.org"]).allowed_fetch_hosts == ("x.org",)


@pytest.mark.parametrize("env, message", [
    ({"PORT": "x"}, "PORT='x' is not an integer"),
    ({"QUEUE_BATCH": "0"}, "QUEUE_BATCH=0 must be >= 1"),
    ({"FETCH_TIMEOUT": "abc"}, "FETCH_TIMEOUT='abc' is not a number"),
    ({"FETCH_TIMEOUT": "0.05"}, "FETCH_TIMEOUT=0.05 must be >= 0.1"),
    ({"CHROMA_SSL": "maybe"}, "CHROMA_SSL='maybe' must be true or false"),
    ({"LOG_LEVEL": "loud"}, "LOG_LEVEL='LOUD' is not one of DEBUG, INFO, WARNING, ERROR"),
    ({"LABEL_STUDIO_URL": "ls:8080"}, "LABEL_STUDIO_URL='ls:8080' must start with http:// or https://"),
    ({"BASIC_AUTH_USER": "u"}, "set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither"),
    ({"DEVICE": "tpu"}, "DEVICE='tpu' must be auto, cpu, cuda[:N] or mps"),
    ({"CLIP_PRETRAINED": "/no/such.pt"}, "CLIP_PRETRAINED='/no/such.pt' looks like a checkpoint path"),
    ({"RQ_QUEUE": "a b"}, "RQ_QUEUE='a b' may contain only letters"),
    ({"ANNOTATION_LOG_JOURNAL": "memory"}, "ANNOTATION_LOG_JOURNAL='memory' must be wal"),
    ({"QUEUE_STRATEGY": "cold_start"}, "QUEUE_STRATEGY='cold_start' must be one of " + ", ".join(QUEUE_STRATEGIES)),
])
def test_each_bad_value_is_one_line_naming_the_variable(env, message):
    with pytest.raises(SettingsError) as failure:
        Settings.from_env(env)
    assert str(failure.value).startswith(message) and "\n" not in str(failure.value)


def test_code_gets_the_same_messages_and_several_problems_are_all_named():
    with pytest.raises(SettingsError, match="^PORT='x' is not an integer$"):
        Settings(port="x")
    with pytest.raises(SettingsError, match="^PORT='x' is not an integer; QUEUE_BATCH=0 must be >= 1$"):
        Settings.from_env({"PORT": "x", "QUEUE_BATCH": "0"})
    with pytest.raises(SettingsError, match="prot"):
        Settings(prot=1)  # a typo in code is an error, not a silently ignored value


def test_secrets_stay_out_of_repr_and_errors():
    secrets = {"REDIS_URL": "redis://:hunter2@db", "CHROMA_AUTH_TOKEN": "tok-42", "LABEL_STUDIO_API_KEY": "k3y-9",
               "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "pw-77"}
    text = repr(Settings.from_env(secrets))
    assert not [value for value in ("hunter2", "tok-42", "k3y-9", "pw-77") if value in text]
    with pytest.raises(SettingsError) as failure:
        Settings.from_env({"REDIS_URL": "http://:hunter2@db"})
    assert "hunter2" not in str(failure.value) and failure.value.__cause__ is None


def test_settings_are_frozen_and_resolve_the_chroma_path(tmp_path):
    settings = Settings(model_dir=tmp_path)
    with pytest.raises(ValueError):
        settings.port = 1
    assert settings.resolved_chroma_path == tmp_path / "chroma"
    assert Settings(model_dir=tmp_path, chroma_path=tmp_path / "c").resolved_chroma_path == tmp_path / "c"
