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

from channels.base import ConfigurationError, TransientSendError, UnknownOutcomeError
from models.activities import FailureCode

# Failures that happen before any byte of the request reaches the provider: safe to
# retry with any provider. Every other transport failure (read/write timeout, reset,
# the server closing without an answer) may come after the provider took the request.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.LocalProtocolError, httpx.ProxyError)


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


async def post(
    client: httpx.AsyncClient, url: str, provider: str, *, sends: bool = True, **kwargs: Any
) -> httpx.Response:
    """POST, classifying network failures by whether the request may have gone out.

    Not connected (refused, connect timeout, no pooled connection): TransientSendError.
    Connected and then no answer (read timeout, reset, closed without a response):
    UnknownOutcomeError, since the provider may have acted on it. `sends=False` for
    calls that deliver nothing (an OAuth token exchange): every failure is transient.
    The exception text never includes the URL: some providers (Telegram) carry the
    token in the path.
    """
    try:
        return await client.post(url, **kwargs)
    except _NOT_SENT as exc:
        raise TransientSendError(f"{provider}: connection failed ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        if not sends:
            raise TransientSendError(f"{provider}: no answer ({type(exc).__name__})") from None
        raise UnknownOutcomeError(f"{provider}: no answer after the request was sent ({type(exc).__name__})") from None


def json_body(response: httpx.Response) -> dict[str, Any]:
    """The response's JSON object, or {} when the body is not a JSON object (a proxy's HTML)."""
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def transient_for_status(
    response: httpx.Response, provider: str, detail: str = ""
) -> TransientSendError | UnknownOutcomeError | None:
    """The generic retryable answers: 408, 425, 429 and every 5xx (Retry-After honoured).

    504 is a gateway that gave up waiting for the provider behind it, which may well
    have sent the message: an unknown outcome, not a plain retry.
    """
    status = response.status_code
    reason = f"{provider}: HTTP {status}" + (f" {detail}" if detail else "")
    if status == 504:
        return UnknownOutcomeError(reason)
    if status == 429:
        return TransientSendError(reason, retry_after=retry_after(response), code=FailureCode.RATE_LIMITED)
    if status in (408, 425) or status >= 500:
        return TransientSendError(reason, retry_after=retry_after(response))
    return None


def rate_limited(reason: str, retry_after: float | None = None) -> TransientSendError:
    """The provider's own "too many, try later" (429 or its own limit codes)."""
    return TransientSendError(reason, retry_after=retry_after, code=FailureCode.RATE_LIMITED)


def configuration_error(provider: str, detail: str) -> ConfigurationError:
    """Our credentials, account or sender are refused: no retry helps until an operator acts."""
    return ConfigurationError(f"{provider}: configuration error: {detail}")


class HttpChannel:
    """Base of the HTTP provider adapters: the pooled client, its closing, and failure reading.

    A subclass sets `name` (the channel), `provider` (how its failures name the provider)
    and `idempotent`, calls `super().__init__` with its base URL, timeout and cost (client
    options such as auth headers pass through to httpx), and keeps only its provider's
    wire format: the request body and the meaning of the provider's error codes.
    """

    name: str
    provider: str
    idempotent: bool = False

    def __init__(self, base_url: str, timeout: float, cost: float = 0.0, **client_options: Any) -> None:
        self._cost = cost
        self._client = make_client(base_url, timeout, **client_options)

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._client.aclose()

    async def _post(
        self, url: str, *, provider: str | None = None, sends: bool = True, **kwargs: Any
    ) -> httpx.Response:
        """POST through the pooled client; network failures classified as `post` does."""
        return await post(self._client, url, provider or self.provider, sends=sends, **kwargs)

    def _transient(self, response: httpx.Response, detail: str = "") -> TransientSendError | UnknownOutcomeError | None:
        """The generic retryable answer of `response` (transient_for_status), if it is one."""
        return transient_for_status(response, self.provider, detail)

    def _configuration_error(self, detail: str) -> ConfigurationError:
        return configuration_error(self.provider, detail)
