"""YAML files as ptq-eval reads them: safe, UTF-8, and a key given twice in one mapping refused (plain YAML
keeps the last one silently). Errors name the file, the line and the column."""

from __future__ import annotations

from pathlib import Path

import yaml

from ptq_eval.errors import UserError


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping (merge keys `<<` are YAML's own and allowed)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    "a key must be a plain value (text or a number), not a list or mapping",
                    key_node.start_mark,
                ) from None
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: Path, what: str, error: type[UserError]) -> object:
    """A YAML file's document; `error` names the file when it is missing, not UTF-8, not YAML, or gives a key
    twice."""
    if not path.is_file():
        raise error(f"{path}: no such {what} file")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as problem:
        raise error(f"{path}: not UTF-8 text: {problem}") from None
    except yaml.YAMLError as problem:
        mark = getattr(problem, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise error(f"{path}: not valid YAML: {where}{getattr(problem, 'problem', None) or problem}") from None
