"""One settings object: CLI flags > env vars > YAML file > defaults."""

import pytest
from pydantic import ValidationError

from embedder.settings import EmbedderSettings


def test_precedence_cli_over_env_over_file_over_default(tmp_path, monkeypatch):
    config = tmp_path / "polyhead.yaml"
    config.write_text("embedder:\n  port: 6000\n  max_batch_size: 8\n  cache_max_entries: 10\n")
    monkeypatch.setenv("POLYHEAD_EMBEDDER_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("POLYHEAD_EMBEDDER_CACHE_MAX_ENTRIES", "20")
    s = EmbedderSettings.load(config, cache_max_entries=30, port=None)
    assert s.port == 6000  # file (CLI left unset)
    assert s.max_batch_size == 16  # env over file
    assert s.cache_max_entries == 30  # CLI over env
    assert s.max_wait_ms == 2.0  # default


def test_settings_file_from_env_var(tmp_path, monkeypatch):
    config = tmp_path / "c.yaml"
    config.write_text("embedder:\n  max_text_chars: 77\n")
    monkeypatch.setenv("POLYHEAD_SETTINGS", str(config))
    assert EmbedderSettings.load().max_text_chars == 77


def test_bad_values_name_the_field(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("embedder:\n  max_batch_size: 0\n  no_such_setting: 1\n")
    with pytest.raises(ValidationError) as info:
        EmbedderSettings.load(config)
    text = str(info.value)
    assert "max_batch_size" in text and "no_such_setting" in text
