"""Runtime configuration from environment variables, with defaults that work on a laptop."""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Signs tracking links on a laptop only; anyone who reads this file can forge them.
DEV_TRACKING_SECRET = "dev-only-tracking-secret-do-not-use-in-production"
# Encrypts Temporal payloads on a laptop only (base64 of 32 bytes; anyone can decrypt with it).
DEV_CODEC_KEY_ID = "dev"
DEV_CODEC_KEY = "ZGV2LW9ubHktY29kZWMta2V5LW5vdC1mb3ItcHJvZCE="


class SmtpSettings(BaseModel):
    """An SMTP relay (an ESP's or your own MTA)."""

    host: str = "127.0.0.1"
    port: int = 587
    # "starttls": plain connect then STARTTLS (port 587); "tls": implicit TLS (465).
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: SecretStr | None = None
    # A CA bundle to trust (a private relay's certificate); the system store otherwise.
    ca_file: str | None = None
    from_address: str = "Cascade <no-reply@example.com>"
    reply_to: str | None = None
    # The domain in our Message-IDs (RFC 5322 wants one we control).
    message_id_domain: str = "cascade.local"
    unsubscribe_mailto: str | None = None
    pool_size: int = 4
    timeout_seconds: float = 20.0


class TwilioSettings(BaseModel):
    """Twilio (or a compatible API) for SMS and voice calls."""

    base_url: str = "https://api.twilio.com"
    account_sid: str = ""
    auth_token: SecretStr = SecretStr("")
    from_number: str = ""
    messaging_service_sid: str | None = None
    status_callback_url: str | None = None
    voice: str = "alice"
    voice_language: str = "en-US"
    timeout_seconds: float = 15.0


class SmsRuSettings(BaseModel):
    """SMS.ru (Russian SMS gateway)."""

    base_url: str = "https://sms.ru"
    api_id: SecretStr = SecretStr("")
    sender: str | None = None
    # test=1 validates without sending or charging (the gateway's own dry-run).
    test: bool = False
    timeout_seconds: float = 15.0


class TelegramSettings(BaseModel):
    """Telegram Bot API."""

    base_url: str = "https://api.telegram.org"
    bot_token: SecretStr = SecretStr("")
    parse_mode: Literal["HTML", "MarkdownV2", "none"] = "none"
    timeout_seconds: float = 15.0


class WhatsAppSettings(BaseModel):
    """WhatsApp Business Cloud API (Meta Graph API)."""

    base_url: str = "https://graph.facebook.com/v21.0"
    phone_number_id: str = ""
    access_token: SecretStr = SecretStr("")
    timeout_seconds: float = 15.0


class ViberSettings(BaseModel):
    """Viber bot (REST) API."""

    base_url: str = "https://chatapi.viber.com"
    auth_token: SecretStr = SecretStr("")
    sender_name: str = "Shop"
    sender_avatar: str | None = None
    timeout_seconds: float = 15.0


class VkSettings(BaseModel):
    """VK community messages (messages.send)."""

    base_url: str = "https://api.vk.com"
    access_token: SecretStr = SecretStr("")
    api_version: str = "5.199"
    timeout_seconds: float = 15.0


class WebPushSettings(BaseModel):
    """Browser push through the subscriber's push service, signed with VAPID."""

    # The application server's private key (raw base64url or DER/PEM as py-vapid reads).
    vapid_private_key: SecretStr = SecretStr("")
    vapid_subject: str = "mailto:ops@example.com"
    ttl_seconds: int = 24 * 3600
    timeout_seconds: float = 15.0


class FcmSettings(BaseModel):
    """Firebase Cloud Messaging HTTP v1 with a service account."""

    base_url: str = "https://fcm.googleapis.com"
    project_id: str = ""
    # The service account key file's JSON (client_email, private_key, token_uri).
    service_account_json: SecretStr = SecretStr("")
    timeout_seconds: float = 15.0


# Default sends per second per channel (see Settings.channel_rate_limits).
DEFAULT_RATE_LIMITS: dict[str, float | None] = {
    "email": 50.0,
    "sms": 10.0,
    "telegram": 25.0,  # Telegram allows ~30 messages/s per bot
    "whatsapp": 70.0,  # Cloud API default throughput 80 mps
    "viber": 50.0,
    "vk": 20.0,
    "webpush": 100.0,
    "fcm": 300.0,
    "voice": 1.0,  # Twilio queues outbound calls at 1 CPS by default
}


class Settings(BaseSettings):
    """Everything a worker, the webhooks service or the starter needs to know.

    Every field reads `CASCADE_<FIELD>`; the two that operators set most often also
    answer to their conventional names (`DATABASE_URL`, `TEMPORAL_ADDRESS`).
    """

    model_config = SettingsConfigDict(env_prefix="CASCADE_", env_file=".env", extra="ignore", env_nested_delimiter="__")

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
    # PostgreSQL only: keep Cascade's tables in their own schema of a shared database
    # (created at start-up if missing; any name, used exactly as written).
    database_schema: str | None = None
    # Connections per process (PostgreSQL; a SQLite file keeps a small pool of its own,
    # cascade/infra/db.py, and waits up to the pool timeout for one). Every activity
    # holds at most one, and only
    # inside a transaction. Main-queue activities (contact checks, accruals, scans) are
    # database work from start to end, so the pool keeps one per main-queue slot: unset,
    # it is worker_max_concurrent_activities. Sends use a connection only for their claim
    # and their record, not across the provider call: the channel queues share the
    # overflow, opened under load and closed when idle, and a send that finds every
    # connection busy waits up to the pool timeout. Keep (pool + overflow) x processes
    # below the server's max_connections (100 by default).
    database_pool_size: int | None = Field(default=None, ge=1)
    database_max_overflow: int = Field(default=10, ge=0)
    database_pool_timeout_seconds: float = Field(default=30.0, gt=0)
    # Activity slots of the worker's main task queue (the channel queues have
    # channel_max_concurrent_sends each).
    worker_max_concurrent_activities: int = Field(default=30, ge=1)
    # Workflows the worker keeps in memory between their tasks (Temporal's sticky cache).
    # A cached journey wakes without replaying its history; one evicted replays it on
    # its next task (correct, only slower). Size it to the journeys that wake together
    # (a campaign's next step), not to every sleeping one: memory grows with it. At 500 a
    # worker with 2,000 journeys asleep peaked at 276 MiB through their wake burst (the
    # 300 MB goal of issue 17, README "Sleeping journeys"); at 1,000 one peaked at 358 MiB.
    worker_max_cached_workflows: int = Field(default=500, ge=0)
    # How long a task of a journey this worker holds waits on the worker's own (sticky)
    # queue before the server moves it to the shared queue, where it comes with the whole
    # history and is replayed from the start. Temporal's 10 s stays the default: in a
    # burst of 1,000 wakes with the cache at 250, 300 s sent sooner (23.9-31.7 against
    # 18.0-19.0 sends/s) but left every task after a send for the end, by when its journey
    # had been evicted, so nearly every task replayed (about 1.9 cache misses per send
    # against 0.8) and the CPU per woken journey did not fall (README, "Sleeping
    # journeys"). Raise it where the cache holds the journeys that wake together.
    worker_sticky_queue_timeout_seconds: float = Field(default=10.0, gt=0)
    # A journey an event starts counts its first delay from the event's occurred_at, if
    # that is no older than this; an older one (a backfill) counts from the start.
    trigger_max_age: timedelta = Field(default=timedelta(days=1), gt=timedelta(0))

    webhooks_host: str = "127.0.0.1"
    webhooks_port: int = 8000
    # Largest request body the webhooks service reads; providers send a few KiB at most.
    webhooks_max_body_bytes: int = 256 * 1024
    # gc.freeze() once the webhooks service has started: what start-up made (imports, the
    # Temporal client, compiled journeys and segments: some 300,000 objects) is never
    # garbage, and every full collection scanned it again (0.5 s each, seven of them per
    # 4,000 batched events). None: only when the app runs its own process (connects to
    # Temporal itself), not when a test hands it a client.
    webhooks_gc_freeze: bool | None = None

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
    # A send's time limits are the send activity's own (workflows/cascade.py: the
    # attempt timeout, and the heartbeat timeout that is also the delivery-log claim's
    # lease); each provider's `timeout_seconds` below must stay inside the attempt.

    # --- Channels (issue #6) ---------------------------------------------------------
    # Which adapter serves each channel: CASCADE_CHANNEL_EMAIL=smtp, CASCADE_CHANNEL_SMS=
    # twilio|smsru, ... Everything defaults to the sandbox, so the demo and tests need
    # no provider account. Provider settings are nested: CASCADE_SMTP__HOST=...,
    # CASCADE_TELEGRAM__BOT_TOKEN=... Secrets are SecretStr: never printed or logged.
    channel_email: Literal["sandbox", "smtp"] = "sandbox"
    channel_sms: Literal["sandbox", "twilio", "smsru"] = "sandbox"
    channel_telegram: Literal["sandbox", "telegram"] = "sandbox"
    channel_whatsapp: Literal["sandbox", "whatsapp"] = "sandbox"
    channel_viber: Literal["sandbox", "viber"] = "sandbox"
    channel_vk: Literal["sandbox", "vk"] = "sandbox"
    channel_webpush: Literal["sandbox", "webpush"] = "sandbox"
    channel_fcm: Literal["sandbox", "fcm"] = "sandbox"
    channel_voice: Literal["sandbox", "twilio"] = "sandbox"

    smtp: SmtpSettings = Field(default_factory=lambda: SmtpSettings())
    twilio: TwilioSettings = Field(default_factory=lambda: TwilioSettings())
    smsru: SmsRuSettings = Field(default_factory=lambda: SmsRuSettings())
    telegram: TelegramSettings = Field(default_factory=lambda: TelegramSettings())
    whatsapp: WhatsAppSettings = Field(default_factory=lambda: WhatsAppSettings())
    viber: ViberSettings = Field(default_factory=lambda: ViberSettings())
    vk: VkSettings = Field(default_factory=lambda: VkSettings())
    webpush: WebPushSettings = Field(default_factory=lambda: WebPushSettings())
    fcm: FcmSettings = Field(default_factory=lambda: FcmSettings())

    # Sends per second per channel, enforced by the Temporal server for the channel's
    # task queue across all workers (a 50k broadcast is spread out, never rejected).
    # A missing channel or null means no limit. Keep below the provider's own limit.
    channel_rate_limits: dict[str, float | None] = Field(default_factory=lambda: dict(DEFAULT_RATE_LIMITS))
    # Each channel's sends run on their own task queue `<task_queue>-<channel>`.
    channel_max_concurrent_sends: int = 50

    # --- `make run` (demo.py) -----------------------------------------------------------
    # The demo's dev server listens on TEMPORAL_ADDRESS, its UI on this port, the webhooks
    # service on webhooks_port; state and logs go to the data folder.
    demo_ui_port: int = Field(default=8233, ge=1, le=65535)
    demo_data_dir: Path = PROJECT_ROOT / "data"
    # After the example journeys, the demo runs this many simulated customers over this
    # many weeks through the real journeys (time-skipping server) so the console has a
    # history to show (`cascade simulate`); 0 customers skips it.
    demo_simulate_customers: int = Field(default=300, ge=0, le=100_000)
    demo_simulate_weeks: int = Field(default=4, ge=1, le=52)

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

    # --- Event relay and scans (#11) ---
    # Signals an event implies are stored with it (the outbox) and sent by a relay in
    # the webhooks process: this many at once, a row leased this long by the process
    # sending it (a crashed process's rows are taken over after it), and stored rows
    # (left behind or backing off after a failure) looked for this often.
    outbox_concurrency: int = Field(default=64, ge=1, le=1000)
    outbox_lease_seconds: float = Field(default=30.0, gt=0)
    outbox_poll_seconds: float = Field(default=2.0, gt=0)
    # POST /v1/events trusts an API key it found valid for this long instead of looking
    # it up on every event; a key revoked from the CLI stops working within it (0: look up
    # every time).
    api_key_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    # The webhooks service judges the segments of the customers events were about after
    # answering, in rounds at most this far apart: a customer with several events in that
    # time is judged once (the judgement reads every segment's conditions over the
    # customer's events, the largest cost of an event after the answer).
    segment_refresh_delay_seconds: float = Field(default=1.0, ge=0, le=60)
    # Scheduled scans (birthdays, win-back) read customers this many at a time, routing
    # up to `scan_concurrency` of them at once, and heartbeat after every page.
    scan_page_size: int = Field(default=500, ge=1, le=10000)
    scan_concurrency: int = Field(default=8, ge=1, le=100)

    # --- Optichannel routing (issue 16) ---
    # Share of routing decisions that explore (Thompson draw instead of the posterior
    # mean), so channels the model is unsure about keep being tried.
    routing_exploration: float = Field(default=0.1, ge=0, le=1)
    # The customer attribute (customers.attributes) whose value names their segment:
    # a new customer starts from their segment's reaction rates.
    routing_segment_attribute: str = Field(default="segment", min_length=1, max_length=64)
    # Deliveries older than this teach the routing model nothing (behaviour changes).
    routing_history_days: int = Field(default=365, ge=1, le=3650)
    # --- Payload encryption in Temporal (#17) ------------------------------------------
    # AES-256-GCM keys by key id (base64 of 32 bytes each), e.g. CASCADE_CODEC_KEYS=
    # '{"2026-11": "..."}'. New payloads use codec_key_id (unset: the last key listed);
    # the others stay to decode what they encrypted, so keep a retired key until the
    # namespace's retention has dropped every history that used it. The default is a
    # public dev-only key: the worker and webhooks warn while it is in use.
    codec_keys: dict[str, SecretStr] = Field(default_factory=lambda: {DEV_CODEC_KEY_ID: SecretStr(DEV_CODEC_KEY)})
    codec_key_id: str | None = None
    # The codec server the Temporal UI decodes through (`python -m webhooks.codec_server`):
    # where it listens, the UI origins its CORS answers admit, and the operator credential
    # a request must carry (`Authorization: Bearer ...`, or the endpoint path `/o/<credential>`
    # the dev server's UI is given); unset, the server refuses to start.
    codec_server_host: str = "127.0.0.1"
    codec_server_port: int = Field(default=8089, ge=1, le=65535)
    codec_server_credential: SecretStr | None = None
    codec_cors_origins: list[str] = Field(default_factory=lambda: ["http://localhost:8233", "http://127.0.0.1:8233"])
    # --- Analytics console (#15) ---
    # Where the console's "open in Temporal UI" links point (the dev server's UI by default).
    temporal_ui_url: str = "http://localhost:8233"
    # Signs the console's login cookie; unset: derived from the tracking secret.
    console_secret: SecretStr | None = None
    console_session_hours: float = Field(default=12.0, gt=0, le=24 * 30)
    # The console's overview and journey pages look back this many days by default.
    console_days: int = Field(default=30, ge=1, le=3650)
    # --- Audiences and broadcasts (#13) ---
    # Segment files (segments/*.yaml) and the thresholds of the built-in funnel segments:
    # new = signed up within new_days; loyal = at least loyal_purchases purchases within
    # loyal_window_days and the last within active_days; active = bought within active_days
    # (not loyal); dormant = last purchase active_days..churned_days ago; churned = longer.
    segments_dir: Path = PROJECT_ROOT / "segments"
    segment_new_days: int = Field(default=30, ge=1, le=3650)
    segment_active_days: int = Field(default=90, ge=1, le=3650)
    segment_loyal_purchases: int = Field(default=3, ge=1, le=100000)
    segment_loyal_window_days: int = Field(default=365, ge=1, le=3650)
    segment_churned_days: int = Field(default=365, ge=2, le=36500)
    # Cascades a broadcast activity starts at once (each start is one Temporal RPC).
    broadcast_start_concurrency: int = Field(default=50, ge=1, le=1000)
    # How often the Temporal Schedule refreshes every segment's memberships (time-only changes).
    segment_refresh_minutes: int = Field(default=60, ge=1, le=10080)
    # An exact count (`--exact`) corrects the last refresh's memberships for the customers
    # touched since (cascade/audiences/corrected.py) while there are at most this many and
    # the refresh is at most this old; past either, it runs the segment's full query.
    segment_exact_max_touched: int = Field(default=200_000, ge=0, le=100_000_000)
    segment_exact_max_age_hours: int = Field(default=168, ge=0, le=8760)
    # How often the Temporal Schedule rolls up the recent days the reports read (the console
    # says "as of" the last refresh for messages before it; newer ones are read live).
    analytics_refresh_minutes: int = Field(default=10, ge=1, le=1440)

    @field_validator("database_schema")
    @classmethod
    def _schema_name(cls, value: str | None) -> str | None:
        # An empty CASCADE_DATABASE_SCHEMA= means "no schema", as if unset.
        return check_schema_name(value) if value else None

    @property
    def pool_size(self) -> int:
        """Connections the pool keeps: the setting, or one per main-queue activity slot."""
        return self.database_pool_size or self.worker_max_concurrent_activities


def check_schema_name(name: str) -> str:
    """`name` if PostgreSQL accepts it as a schema name, else a ValueError saying why."""
    if "\x00" in name:
        raise ValueError("database schema name must not contain NUL")
    if len(name.encode()) > 63:
        # PostgreSQL would silently truncate it to 63 bytes (NAMEDATALEN - 1).
        raise ValueError(f"database schema name {name!r} is longer than 63 bytes")
    if name.startswith("pg_"):
        raise ValueError(f"database schema name {name!r}: names starting with pg_ are reserved by PostgreSQL")
    if not name.strip():
        raise ValueError("database schema name must not be blank")
    return name


@lru_cache
def get_settings() -> Settings:
    """Settings of this process, read once from the environment."""
    return Settings()
