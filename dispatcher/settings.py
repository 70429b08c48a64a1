"""Settings from the environment (and an optional `.env` file): secrets and endpoints.

Only the composition roots (`cli.py`, `web/app.py`) call `Settings.from_env()`;
everything else receives the values it needs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DB_URL = "sqlite:///var/dispatcher.db"
DEFAULT_CONFIG = "config/dispatcher.toml"


@dataclass(frozen=True, slots=True)
class Settings:
    config_path: Path = Path(DEFAULT_CONFIG)
    db_url: str = DEFAULT_DB_URL
    now: str | None = None  # DISPATCHER_NOW, ISO 8601
    twilio_account_sid: str = ""
    twilio_auth_token: str = ""
    twilio_api_url: str | None = None  # base URL override (the sandbox)
    smtp_url: str | None = None  # smtp://user:pass@host:port or smtps://...
    public_url: str = "http://127.0.0.1:8080"
    signing_key: str = ""
    transport: str | None = None  # "file" replaces every provider
    spool_dir: Path = Path("var/spool")
    instance_id: str = ""
    api_token: str = ""  # DISPATCHER_API_TOKEN: enables the collectors' HTTP API

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, dotenv: bool = True) -> Settings:
        """Read the environment; a `.env` file in the working directory fills gaps."""
        if env is None:
            if dotenv:
                from dotenv import dotenv_values

                file_values = {k: v for k, v in dotenv_values(".env").items() if v is not None}
                env = {**file_values, **os.environ}
            else:
                env = dict(os.environ)
        return cls(
            config_path=Path(env.get("DISPATCHER_CONFIG") or DEFAULT_CONFIG),
            db_url=env.get("DISPATCHER_DB_URL") or DEFAULT_DB_URL,
            now=env.get("DISPATCHER_NOW") or None,
            twilio_account_sid=env.get("TWILIO_ACCOUNT_SID", ""),
            twilio_auth_token=env.get("TWILIO_AUTH_TOKEN", ""),
            twilio_api_url=env.get("DISPATCHER_TWILIO_API_URL") or None,
            smtp_url=env.get("DISPATCHER_SMTP_URL") or None,
            public_url=(env.get("DISPATCHER_PUBLIC_URL") or "http://127.0.0.1:8080").rstrip("/"),
            signing_key=env.get("DISPATCHER_SIGNING_KEY", ""),
            transport=env.get("DISPATCHER_TRANSPORT") or None,
            spool_dir=Path(env.get("DISPATCHER_SPOOL_DIR") or "var/spool"),
            api_token=env.get("DISPATCHER_API_TOKEN", ""),
            instance_id=env.get("DISPATCHER_INSTANCE_ID", "") or f"{os.uname().nodename}-{os.getpid()}",
        )
