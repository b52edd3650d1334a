"""`python -m bench.signal_sink_worker ADDRESS TASK_QUEUE`: the webhooks benchmark's worker in
a process of its own, so its CPU is measured apart from the benchmark's HTTP and signal
clients (in one process the two were one figure)."""

from __future__ import annotations

import asyncio
import signal
import sys

from temporalio.client import Client
from temporalio.worker import Worker

from bench.signal_sink import SignalSink
from cascade.infra.codec import data_converter
from cascade.infra.settings import get_settings


async def serve(address: str, task_queue: str) -> None:
    """Run a SignalSink worker until SIGINT or SIGTERM."""
    # The same settings (codec keys) as the benchmark and the webhooks service, from the environment.
    client = await Client.connect(address, data_converter=data_converter(get_settings()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Worker(client, task_queue=task_queue, workflows=[SignalSink]):
        print("worker: ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2]))
