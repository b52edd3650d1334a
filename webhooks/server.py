"""`python -m webhooks.server`: serve the webhooks app with uvicorn on the configured port."""

from __future__ import annotations

import uvicorn

from cascade.infra.logging import configure_logging
from cascade.infra.settings import get_settings
from webhooks.app import create_app


def main() -> None:
    """Run the service until SIGINT/SIGTERM (uvicorn drains in-flight requests)."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    uvicorn.run(
        create_app(settings),
        host=settings.webhooks_host,
        port=settings.webhooks_port,
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    main()
