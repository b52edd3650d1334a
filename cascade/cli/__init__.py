"""The `cascade` command-line tool: one module per command group, assembled in main.py.

Adding a group: write `cascade/cli/<group>.py` exposing `app = typer.Typer(...)` (use
`cascade.cli.common.group(...)` for the shared look), then register it with one line in
main.py. The CLI is an entry point: it may import anything below it, nothing imports it.
"""
