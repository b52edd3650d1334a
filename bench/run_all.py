"""`make bench`: every benchmark in one go, one table (metric, Cascade, raw baseline, ratio, goal).

    .venv/bin/python bench/run_all.py [--full] [--only webhooks,throughput]

Each benchmark runs in a child process of its own (quick sizes by default, the sizes the
README quotes with --full) and leaves its figures in bench/results/<name>.json (or prints
them as JSON); the table is built from those files and written to
bench/results/summary.json with the machine it ran on. PostgreSQL parts use
CASCADE_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test) and are
marked skipped when it does not answer. A benchmark that fails is reported in the table
and the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
POSTGRES = os.environ.get("CASCADE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass
class Row:
    """One line of the table."""

    metric: str
    cascade: float | None
    baseline: float | None = None
    goal: str = ""
    unit: str = ""

    @property
    def ratio(self) -> float | None:
        if self.cascade is None or not self.baseline:
            return None
        return self.cascade / self.baseline


@dataclass
class Bench:
    """A benchmark: its command (quick and full sizes) and how its figures become rows."""

    name: str
    quick: list[str]
    full: list[str]
    rows: Callable[[dict[str, Any]], list[Row]]
    result_file: str | None = None  # under bench/results/; None: the last JSON object on stdout
    needs_postgres: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _webhooks(r: dict[str, Any]) -> list[Row]:
    return [
        Row("POST /v1/events on SQLite (events/s vs bare handle.signal/s)", r.get("api_events_per_s"),
            r.get("bare_signals_per_s"), ">= 0.8", "/s"),
        Row("event to workflow latency p50 (ms, lower is better)", r.get("api_p50_ms"), r.get("bare_p50_ms"), "", "ms"),
        Row("HTTP floor: GET /healthz, same client and server (req/s vs bare handle.signal/s)",
            r.get("http_floor_per_s"), r.get("bare_signals_per_s"), "", "/s"),
    ]  # fmt: skip


def _batch(r: dict[str, Any]) -> list[Row]:
    return [Row("POST /v1/events/batch on PostgreSQL (events/s)", r.get("batch_events_per_s"), None, ">= 2000/s", "/s")]


def _throughput(r: dict[str, Any]) -> list[Row]:
    runs = r.get("runs", [])
    raw = [x["journeys"] / x["seconds"] for x in runs if x["side"] == "raw"]
    ours = [x["journeys"] / x["seconds"] for x in runs if x["side"] == "cascade"]
    return [
        Row("journeys/s (start, send, signal, end) vs raw Temporal", sum(ours) / len(ours) if ours else None,
            sum(raw) / len(raw) if raw else None, ">= 0.8", "/s"),
    ]  # fmt: skip


def _sleeping(r: dict[str, Any]) -> list[Row]:
    ours, raw = r.get("cascade", {}), r.get("raw", {})
    n = r.get("n", "?")
    return [
        Row(f"wake burst of {n} sleeping journeys (sends/s vs raw timer + activity)", ours.get("sends_per_s"),
            raw.get("sends_per_s"), ">= 0.8", "/s"),
        Row(f"worker peak RSS, {n} journeys asleep then sending (MiB, vs raw workflows)",
            ours.get("worker_peak_rss_mib"), raw.get("worker_peak_rss_mib"), "<= 300 at 100,000", "MiB"),
        Row(f"dev server RSS with {n} journeys asleep (MiB)", ours.get("server_rss_asleep_mib"), None, "", "MiB"),
    ]  # fmt: skip


def _broadcast(r: dict[str, Any]) -> list[Row]:
    return [
        Row("broadcast: journeys started/s vs raw start loop", r.get("broadcast_per_s"), r.get("raw_per_s"), "", "/s"),
        Row("broadcast worker peak RSS (MiB)", r.get("peak_rss_mib"), None, "", "MiB"),
    ]


def _channels(r: dict[str, Any]) -> list[Row]:
    skip = {"n", "concurrency"}
    return [
        Row(f"channel adapter {name} (messages/s, local double)", v, None, "", "/s")
        for name, v in r.items()
        if name not in skip
    ]


def _analytics(r: dict[str, Any]) -> list[Row]:
    queries = r.get("query_median_s", {})
    n = r.get("rows_deliveries")
    size = f"{n:,}" if isinstance(n, int) else "?"
    return [Row(f"analytics {name} (s, {size} deliveries)", v, None, "", "s") for name, v in queries.items()]


def _ran(r: dict[str, Any]) -> list[Row]:
    return []


BENCHES = [
    Bench("webhooks", ["bench/webhooks.py", "-n", "200", "-m", "20", "--batch-events", "0"],
          ["bench/webhooks.py", "-n", "1000", "-m", "60", "--batch-events", "0"], _webhooks, "webhooks.json"),
    Bench("webhooks-batch", ["bench/webhooks.py", "-n", "0", "--batch-events", "4000", "--database-url", POSTGRES,
                             "--out", "webhooks_batch.json"],
          ["bench/webhooks.py", "-n", "0", "--batch-events", "20000", "--database-url", POSTGRES,
           "--out", "webhooks_batch.json"], _batch, "webhooks_batch.json", needs_postgres=True),
    Bench("throughput", ["bench/throughput.py", "-n", "100", "--concurrency", "20", "--warmup", "10", "--rounds", "2"],
          ["bench/throughput.py", "-n", "1000"], _throughput, "throughput.json"),
    Bench("sleeping", ["bench/sleeping.py", "-n", "100", "--timeout", "600"], ["bench/sleeping.py", "-n", "20000"],
          _sleeping, "sleeping.json"),
    Bench("broadcast", ["bench/broadcast.py", "starts", "-n", "1000"], ["bench/broadcast.py", "starts", "-n", "100000"],
          _broadcast, None, needs_postgres=True),
    Bench("channels", ["bench/channels.py", "-n", "100"], ["bench/channels.py"], _channels, "channels.json"),
    Bench("analytics", ["bench/analytics.py", "--deliveries", "20000", "--repeat", "1", "--loads", "3"],
          ["bench/analytics.py"], _analytics, None, needs_postgres=True),
    Bench("profiles", ["bench/profiles.py", "-n", "2000", "--checks", "50"], ["bench/profiles.py"], _ran),
    Bench("routing", ["bench/routing.py", "--customers", "10", "--weeks", "1"], ["bench/routing.py"], _ran),
    Bench("experiment", ["-m", "bench.experiment_simulation", "--customers", "100"],
          ["-m", "bench.experiment_simulation"], _ran),
]  # fmt: skip


def _postgres_answers() -> bool:
    probe = "import asyncio, asyncpg, sys; asyncio.run(asyncpg.connect(sys.argv[1], timeout=3))"
    url = POSTGRES.replace("postgresql+asyncpg://", "postgresql://")
    return subprocess.run([sys.executable, "-c", probe, url], capture_output=True, timeout=30).returncode == 0


def _last_json(text: str) -> dict[str, Any]:
    """The last JSON object a benchmark printed (some print one over several lines)."""
    end = text.rfind("}")
    start = text.rfind("\n{", 0, end)
    start = 0 if start < 0 and text.startswith("{") else start
    found: dict[str, Any] = json.loads(text[start : end + 1])
    return found


def run(bench: Bench, full: bool, log: Path) -> tuple[str, list[Row], float]:
    """Run one benchmark; (status, rows, seconds)."""
    args = bench.full if full else bench.quick
    started = time.perf_counter()
    result_path = RESULTS / bench.result_file if bench.result_file else None
    if result_path is not None:
        result_path.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    with log.open("w") as out:
        done = subprocess.run([sys.executable, *args], cwd=HERE.parent, stdout=subprocess.PIPE, stderr=out, env=env)
    text = done.stdout.decode(errors="replace")
    log.with_suffix(".out").write_text(text)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        return f"failed (exit {done.returncode}, see {log.name})", [], seconds
    try:
        figures = json.loads(result_path.read_text()) if result_path else _last_json(text)
    except (OSError, ValueError) as exc:
        if bench.rows is _ran:
            return "ran", [], seconds
        return f"no figures ({exc})", [], seconds
    return "ran", bench.rows(figures), seconds


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description="Run every benchmark and print one table.")
    parser.add_argument("--full", action="store_true", help="the README's sizes (long: tens of minutes)")
    parser.add_argument(
        "--only", default="", help="comma-separated benchmark names: " + ", ".join(b.name for b in BENCHES)
    )
    args = parser.parse_args()
    wanted = {n.strip() for n in args.only.split(",") if n.strip()}
    unknown = wanted - {b.name for b in BENCHES}
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {', '.join(sorted(unknown))}")
    RESULTS.mkdir(exist_ok=True)
    console = Console()
    postgres = _postgres_answers()
    statuses: dict[str, dict[str, Any]] = {}
    rows: list[Row] = []
    for bench in BENCHES:
        if wanted and bench.name not in wanted:
            continue
        if bench.needs_postgres and not postgres:
            statuses[bench.name] = {"status": f"skipped: PostgreSQL at {POSTGRES} does not answer"}
            continue
        console.print(f"[bold]{bench.name}[/bold] ...", end=" ")
        status, found, seconds = run(bench, args.full, RESULTS / f"{bench.name}.log")
        console.print(f"{status} in {seconds:.0f} s")
        statuses[bench.name] = {"status": status, "seconds": round(seconds, 1)}
        rows += found

    table = Table("metric", "Cascade", "raw baseline", "ratio", "goal", title="Cascade benchmarks")
    for row in rows:
        table.add_row(row.metric, _fmt(row.cascade), _fmt(row.baseline), _fmt(row.ratio), row.goal)
    console.print(table)
    for name, s in statuses.items():
        if s["status"] != "ran":
            console.print(f"{name}: {s['status']}")
    machine = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
    }
    summary = {
        "sizes": "full" if args.full else "quick",
        "machine": machine,
        "benchmarks": statuses,
        "rows": [{**asdict(r), "ratio": r.ratio} for r in rows],
    }
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    console.print(f"written to {RESULTS / 'summary.json'}")


if __name__ == "__main__":
    main()
