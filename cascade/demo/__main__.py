"""`python -m cascade.demo [--once] [--external-temporal]`: what `make run` runs."""

import typer

from cascade.demo.main import main

typer.run(main)
