"""`copy_shipped_config`: a copy of the shipped configuration in another folder still
finds the shipped templates and forbidden phrases, with the caller's edits applied."""

from __future__ import annotations

from pathlib import Path

from dispatcher.config import load_config
from dispatcher.testing import SHIPPED_CONFIG, copy_shipped_config

ROOT = Path(__file__).resolve().parents[2]


def test_the_copy_points_at_the_shipped_templates_and_phrases(tmp_path: Path) -> None:
    path = copy_shipped_config(tmp_path / "elsewhere", lambda text: text.replace(
        "send_every_seconds = ", "send_every_seconds = 1 #", 1))
    assert path == tmp_path / "elsewhere" / "dispatcher.toml"
    assert SHIPPED_CONFIG == ROOT / "config" / "dispatcher.toml"
    config = load_config(path)
    assert config.resolve(config.templates.directory) == ROOT / "templates"
    assert config.resolve(config.templates.forbidden_phrases) == ROOT / "config" / "forbidden_phrases.txt"
    assert config.resolve(config.templates.forbidden_phrases).is_file()
    assert config.scheduler.send_every_seconds == 1
    # nothing else changed
    shipped = load_config(SHIPPED_CONFIG)
    assert config.stages == shipped.stages
