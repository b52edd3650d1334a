"""The order tests run in: modules holding the longest tests first.

The suite runs on xdist workers (`-n auto`, `--dist load`), which take tests in collection
order. A two-minute test collected last (alphabetically, tests/test_webhooks_*.py) would
start when the other workers have nothing left and keep the run going alone; started first,
it runs beside the short tests. Whole modules move, their tests keep their order, so a
module-scoped fixture (a module's own Temporal server, a web server) is still set up once
per worker.

How long a module's longest test takes comes from the previous run on this checkout (kept
in pytest's cache, .pytest_cache/) or, on a fresh clone, from FIRST below. conftest.py
imports the hooks.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

CACHE_KEY = "cascade/longest-test-per-module"

# Seconds of each module's longest test (setup + call), from `pytest --durations=60` of the
# whole suite in one process on the 2-core machine, 2026-12-01 (load average 18-30 from other
# work, so the figures are high; only their order matters): used where the cache has no
# figure (a fresh clone, as on CI). Modules whose longest test took under 20 s are left out.
FIRST: dict[str, float] = {
    "test_readme.py": 1120.0,
    "test_broadcast_integration.py": 417.0,
    "test_architecture.py": 191.0,
    "test_import.py": 130.0,
    "test_console.py": 108.0,
    "test_demo.py": 98.0,
    "test_database.py": 66.0,
    "test_compose.py": 56.0,
    "test_cli.py": 46.0,
    "test_crash.py": 31.0,
    "test_experiments_results.py": 29.0,
    "test_codec.py": 28.0,
    "test_console_browser.py": 26.0,
    "test_codec_ui.py": 24.0,
    "test_lifecycle.py": 21.0,
    "test_preferences.py": 20.0,
}

_measured: defaultdict[str, float] = defaultdict(float)
_per_test: defaultdict[str, float] = defaultdict(float)


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0].rsplit("/", 1)[-1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules with the longest tests first; the rest in collection order."""
    known: dict[str, float] = {**FIRST}
    # No cache under `-p no:cacheprovider` (tests/test_database.py runs pytest that way).
    if (cache := getattr(config, "cache", None)) is not None:
        known.update(cache.get(CACHE_KEY, {}))
    first_seen: dict[str, int] = {}
    for index, item in enumerate(items):
        first_seen.setdefault(_module(item.nodeid), index)
    # sorted() is stable: tests of one module stay in their order, and modules
    # without a figure keep collection order after those with one.
    items.sort(key=lambda item: (-known.get(_module(item.nodeid), 0.0), first_seen[_module(item.nodeid)]))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Add up each test's setup and call time (under xdist this runs in the controller)."""
    if report.when in ("setup", "call"):
        _per_test[report.nodeid] += report.duration
        module = _module(report.nodeid)
        _measured[module] = max(_measured[module], _per_test[report.nodeid])


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Keep this run's figures for the next run's order (modules not run keep theirs)."""
    cache = getattr(session.config, "cache", None)
    if cache is None or not _measured or hasattr(session.config, "workerinput"):
        return
    known: dict[str, float] = cache.get(CACHE_KEY, {})
    known.update({module: round(seconds, 2) for module, seconds in _measured.items()})
    cache.set(CACHE_KEY, known)
