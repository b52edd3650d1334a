"""`python -m cascade.cli ...`: the same tool as the `cascade` console script."""

from cascade.cli.main import app

app(prog_name="cascade")
