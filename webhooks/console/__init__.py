"""The analytics console, served by the webhooks app under /console (see pages.py)."""

from webhooks.console.pages import router

__all__ = ["router"]
