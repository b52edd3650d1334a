"""Loading journey definitions from the YAML files in journeys/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cascade.infra.settings import PROJECT_ROOT
from cascade.infra.yaml_source import compose_and_load, line_of
from cascade.journeys.definition import validate_spec
from models.journey import JourneySpec

JOURNEYS_DIR = PROJECT_ROOT / "journeys"


class JourneyDefinitionError(ValueError):
    """A journey definition is invalid; the message names the file and the field."""


def describe_validation_error(exc: ValidationError, where: str, tree: yaml.Node | None = None) -> str:
    """One line per problem: `where: field.path (line N): message`.

    With the composed YAML `tree`, each problem names the line of the deepest node
    its field path reaches, so a marketer jumps straight to it in an editor.
    """
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        line = line_of(tree, tuple(err["loc"]))
        at = f" (line {line})" if line is not None else ""
        lines.append(f"{where}: {loc}{at}: {err['msg']}")
    return "\n".join(lines)


def resolve_journey_path(name_or_path: str | Path) -> Path:
    """`welcome` -> journeys/welcome.yaml; a path is taken as it is."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return JOURNEYS_DIR / f"{name_or_path}.yaml"


def parse_journey(data: Any, where: str, tree: yaml.Node | None = None) -> JourneySpec:
    """Validate already-parsed journey data (shape and authoring checks); errors name `where`,
    the line and the field."""
    if not isinstance(data, dict):
        raise JourneyDefinitionError(f"{where}: expected a mapping with name and steps")
    try:
        return validate_spec(data)
    except ValidationError as exc:
        raise JourneyDefinitionError(describe_validation_error(exc, where, tree)) from exc


def load_journey(name_or_path: str | Path) -> JourneySpec:
    """Read and validate one journey file."""
    path = resolve_journey_path(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise JourneyDefinitionError(f"{path}: cannot read journey file ({exc.strerror})") from exc
    return parse_journey_text(text, str(path))


def parse_journey_text(text: str, where: str) -> JourneySpec:
    """Parse and validate YAML text; errors name `where`, the line and the field."""
    tree, data = compose_and_load(text, where, JourneyDefinitionError)
    return parse_journey(data, where, tree)


def journey_files(directory: Path = JOURNEYS_DIR) -> list[Path]:
    """Every journey definition in `directory`, sorted by name."""
    return sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])


_PARSED: dict[Path, tuple[tuple[int, int], JourneySpec]] = {}


def load_all_journeys(directory: Path = JOURNEYS_DIR) -> list[JourneySpec]:
    """Every journey in `directory`, validated (the first invalid file raises).

    Every event is routed against every journey, so a file is parsed again only when
    it changed (size or modification time): an edit applies to the next event without
    a restart, and an unchanged file costs a stat. Treat the specs as read-only.
    """
    specs = []
    for path in journey_files(directory):
        stat = path.stat()
        version = (stat.st_mtime_ns, stat.st_size)
        cached = _PARSED.get(path)
        if cached is None or cached[0] != version:
            cached = (version, load_journey(path))
            _PARSED[path] = cached
        specs.append(cached[1])
    return specs


# Share of customers assumed to give each reaction to one message, for the estimate
# before launch (the analytics forecast replaces them with measured rates).
ASSUMED_REACTION_RATE: dict[str, float] = {"delivered": 0.95, "opened": 0.2, "clicked": 0.05, "converted": 0.02}


def estimate_cost(spec: JourneySpec, costs: dict[str, float]) -> tuple[float, float, list[float]]:
    """(expected, worst case, reach share per step) of one customer's journey.

    Expected: a step is reached only by those who did not react earlier, at the
    assumed reaction rate of what each step awaits. Worst case: nobody reacts and
    every step sends. Conditional steps are counted as if they always send.
    """
    reach = 1.0
    expected = worst = 0.0
    shares = []
    for step in spec.steps:
        cost = costs.get(step.channel.value, 0.0)
        shares.append(reach)
        expected += reach * cost
        worst += cost
        reach *= 1.0 - ASSUMED_REACTION_RATE[step.await_reaction.value]
    return expected, worst, shares
