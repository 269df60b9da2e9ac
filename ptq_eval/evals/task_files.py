"""lm-eval task YAML files as a study names them: recognised by suffix, named by what they declare.

A leaf module: the study spec and the lm-eval bridge both read task files through it.
"""

from __future__ import annotations

from pathlib import Path

import yaml

TASK_FILE_SUFFIXES = (".yaml", ".yml")


def is_task_file(task: str) -> bool:
    return task.endswith(TASK_FILE_SUFFIXES)


class _TagTolerantLoader(yaml.SafeLoader):
    """Reads lm-eval YAML without running it: `!function` and other tags load as None."""


_TagTolerantLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def task_file_name(path: str) -> str:
    """The task (or group) name a task YAML declares; its file name when it declares none."""
    with open(path, encoding="utf-8") as handle:
        config = yaml.load(handle, Loader=_TagTolerantLoader)
    names = [config.get(key) for key in ("task", "group")] if isinstance(config, dict) else []
    return next((name for name in names if isinstance(name, str)), Path(path).stem)
