"""Loading journey definitions from the YAML files in journeys/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from core.settings import PROJECT_ROOT
from models.journey import JourneySpec

JOURNEYS_DIR = PROJECT_ROOT / "journeys"


class JourneyDefinitionError(ValueError):
    """A journey definition is invalid; the message names the file and the field."""


def describe_validation_error(exc: ValidationError, where: str) -> str:
    """One line per problem: `where: field.path: message`."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"{where}: {loc}: {err['msg']}")
    return "\n".join(lines)


def resolve_journey_path(name_or_path: str | Path) -> Path:
    """`welcome` -> journeys/welcome.yaml; a path is taken as it is."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return JOURNEYS_DIR / f"{name_or_path}.yaml"


def parse_journey(data: Any, where: str) -> JourneySpec:
    """Validate already-parsed journey data; errors name `where` and the field."""
    if not isinstance(data, dict):
        raise JourneyDefinitionError(f"{where}: expected a mapping with name and steps")
    try:
        return JourneySpec.model_validate(data)
    except ValidationError as exc:
        raise JourneyDefinitionError(describe_validation_error(exc, where)) from exc


def load_journey(name_or_path: str | Path) -> JourneySpec:
    """Read and validate one journey file."""
    path = resolve_journey_path(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise JourneyDefinitionError(f"{path}: cannot read journey file ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise JourneyDefinitionError(f"{path}:{line} invalid YAML: {exc}") from exc
    return parse_journey(data, str(path))
