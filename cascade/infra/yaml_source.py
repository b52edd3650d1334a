"""YAML authoring files read with their line marks, so errors point into the editor.

Journeys and segments are written by marketers in YAML; a validation error that names the
field and the line saves them a hunt. Both file kinds read their text through here.
"""

from __future__ import annotations

from typing import Any

import yaml


def compose_and_load(text: str, where: str, error: type[Exception]) -> tuple[yaml.Node | None, Any]:
    """The composed node tree (for line numbers) and the plain data of YAML `text`.

    Unreadable YAML raises `error` naming `where` and the line the parser stopped at.
    """
    try:
        tree = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise error(f"{where}:{line} invalid YAML: {exc}") from exc
    return tree, data


def line_of(tree: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the node at `loc` (or its deepest existing ancestor); None without a tree.

    A missing field or a validator on a whole object names the parent's line.
    """
    if tree is None:
        return None
    node = tree
    line = node.start_mark.line + 1
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    child, line = value, key.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line
