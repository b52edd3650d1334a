"""`python demo.py [--once] [--external-temporal]`: an alias of `python -m cascade.demo` (`make run`).

The demo lives in cascade/demo/: supervisor.py (processes, ports, signals), sample_data.py
(the six customers c-1001..c-1006), report.py (the closing table), main.py (the run).
"""

import typer

from cascade.demo.main import main

if __name__ == "__main__":
    typer.run(main)
