"""Runtime configuration from environment variables, with defaults that work on a laptop."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Signs tracking links on a laptop only; anyone who reads this file can forge them.
DEV_TRACKING_SECRET = "dev-only-tracking-secret-do-not-use-in-production"


class Settings(BaseSettings):
    """Everything a worker, the webhooks service or the starter needs to know.

    Every field reads `CASCADE_<FIELD>`; the two that operators set most often also
    answer to their conventional names (`DATABASE_URL`, `TEMPORAL_ADDRESS`).
    """

    model_config = SettingsConfigDict(env_prefix="CASCADE_", env_file=".env", extra="ignore")

    temporal_address: str = Field(
        default="127.0.0.1:7233",
        validation_alias=AliasChoices("TEMPORAL_ADDRESS", "CASCADE_TEMPORAL_ADDRESS"),
    )
    temporal_namespace: str = "default"
    task_queue: str = "cascade"

    database_url: str = Field(
        default=f"sqlite:///{PROJECT_ROOT / 'data' / 'cascade.db'}",
        validation_alias=AliasChoices("DATABASE_URL", "CASCADE_DATABASE_URL"),
    )
    # PostgreSQL only: keep Cascade's tables in their own schema of a shared database.
    database_schema: str | None = None

    webhooks_host: str = "127.0.0.1"
    webhooks_port: int = 8000
    # Largest request body the webhooks service reads; providers send a few KiB at most.
    webhooks_max_body_bytes: int = 256 * 1024

    log_level: str = "INFO"
    # "auto": pretty when stderr is a terminal, JSON otherwise (containers, CI, files).
    log_format: Literal["auto", "json", "console"] = "auto"

    # Price of one message per channel, recorded on every delivery (override with JSON,
    # e.g. CASCADE_CHANNEL_COSTS='{"sms": 0.07}'); used for cost and savings reports.
    channel_costs: dict[str, float] = Field(
        default_factory=lambda: {
            "email": 0.001,
            "telegram": 0.0,
            "vk": 0.0,
            "viber": 0.02,
            "whatsapp": 0.03,
            "webpush": 0.0001,
            "fcm": 0.0,
            "sms": 0.05,
            "voice": 0.12,
        }
    )
    currency: str = "USD"

    # How long one provider call may take before Temporal counts the attempt as failed.
    send_timeout_seconds: float = 30.0

    # --- Webhooks, tracking links and provider receipts (#5) ---
    # HMAC key of open-pixel, click and unsubscribe tokens; set a long random value in
    # production (the webhooks service logs a warning while the dev default is in use).
    tracking_secret: SecretStr = SecretStr(DEV_TRACKING_SECRET)
    # Where customers reach the webhooks service from the internet (links point here).
    public_url: str = "http://127.0.0.1:8000"
    tracking_link_ttl_days: int = Field(default=180, gt=0)
    # Unsubscribe links must keep working long after the send (mailbox providers check).
    unsubscribe_ttl_days: int = Field(default=730, gt=0)
    # Provider webhook secrets; a provider whose secret is unset has its receipts refused.
    webhook_mailgun_signing_key: SecretStr | None = None
    webhook_twilio_auth_token: SecretStr | None = None
    webhook_telegram_secret: SecretStr | None = None
    webhook_whatsapp_app_secret: SecretStr | None = None
    webhook_whatsapp_verify_token: SecretStr | None = None
    webhook_viber_auth_token: SecretStr | None = None
    webhook_vk_secret: SecretStr | None = None
    webhook_vk_confirmation: str | None = None


@lru_cache
def get_settings() -> Settings:
    """Settings of this process, read once from the environment."""
    return Settings()
