"""`python -m cascade.demo [--once] [--external-temporal]`: what `make run` runs."""

import typer

from cascade.demo.main import main

# Guarded so that importing the module (as tools that import every module do) runs nothing.
if __name__ == "__main__":
    typer.run(main)
