"""What every HTTP provider adapter shares: one pooled client, and reading failures.

Each adapter owns one `httpx.AsyncClient` (keep-alive connections reused across
sends) and turns the provider's answer into a receipt or a Permanent/Transient error.
The generic rules live here so adapters only add their provider's own error codes.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

import httpx

from channels.base import TransientSendError

# How long to wait before retrying when the provider rejects our credentials or
# configuration: nothing the customer did, and nothing a quick retry fixes; an
# operator can fix the setting while Temporal keeps the step alive.
CONFIGURATION_RETRY_SECONDS = 300.0


def make_client(base_url: str, timeout: float, **kwargs: Any) -> httpx.AsyncClient:
    """One pooled client per adapter; the timeout covers connect, read and write."""
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(timeout),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        **kwargs,
    )


def retry_after(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds (delta-seconds or an HTTP date), if present."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


async def post(client: httpx.AsyncClient, url: str, provider: str, **kwargs: Any) -> httpx.Response:
    """POST, turning network failures (refused, reset, timeout) into a transient error.

    The exception text never includes the URL: some providers (Telegram) carry the
    token in the path.
    """
    try:
        return await client.post(url, **kwargs)
    except httpx.TimeoutException as exc:
        raise TransientSendError(f"{provider}: timeout ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        raise TransientSendError(f"{provider}: connection failed ({type(exc).__name__})") from None


def json_body(response: httpx.Response) -> dict[str, Any]:
    """The response's JSON object, or {} when the body is not a JSON object (a proxy's HTML)."""
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def transient_for_status(response: httpx.Response, provider: str, detail: str = "") -> TransientSendError | None:
    """The generic retryable answers: 408, 425, 429 and every 5xx (Retry-After honoured)."""
    status = response.status_code
    if status in (408, 425, 429) or status >= 500:
        reason = f"{provider}: HTTP {status}" + (f" {detail}" if detail else "")
        return TransientSendError(reason, retry_after=retry_after(response))
    return None


def configuration_error(provider: str, detail: str) -> TransientSendError:
    """Our credentials or account are refused: retried slowly until an operator fixes it."""
    return TransientSendError(f"{provider}: configuration error: {detail}", retry_after=CONFIGURATION_RETRY_SECONDS)
