"""What is wrong with a YAML document that does not validate against its schema, said the way the user wrote it:
one line per problem, `file: key.path: message`, type errors in words with what the key accepts."""

from __future__ import annotations

from pydantic import BaseModel, ValidationError

from ptq_eval.errors import UserError
from ptq_eval.quant.grid import MAX_BITS, MIN_BITS
from ptq_eval.quant.precision import SCHEMES

# pydantic's names for the branches of a scalar-or-list union, in an error's key path
SCALAR_BRANCHES = ("list[int]", "int", "bool", "list[bool]")


def _location(loc: tuple, branches: tuple[str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in SCALAR_BRANCHES or part in branches:
            continue  # pydantic's name for a union branch, not a key the user wrote
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


# pydantic's type errors, as what the value should have been
TYPE_WORDS = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "a whole number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "float_parsing": "a number",
    "float_type": "a number",
    "string_type": "text",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "tuple_type": "a list",
}
# what a key accepts, added to a type error about it
ACCEPTED = {
    "bits": f"{MIN_BITS}..{MAX_BITS} or a list of them",
    "group_size": "-1 (per channel), 0 (per tensor), a positive integer, or a list of them",
    "symmetric": "true, false, or a list of them",
    "tokens": "a positive integer",
    "samples": "a positive integer",
    "seq_len": "an integer above 1",
    "scheme": ", ".join(SCHEMES),
}


def _describe(error: dict) -> str:
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "required key is missing"
    return message


def _type_problem(location: str, errors: list[dict]) -> str:
    """One sentence for the type errors a value got from every branch of its union."""
    words = list(dict.fromkeys(TYPE_WORDS[e["type"]] for e in errors))
    key = location.rsplit(".", 1)[-1].split("[")[0]
    if "a list" in words and len(words) > 1:
        words.remove("a list")
        if key not in ACCEPTED:
            words[-1] += " (or a list of them)"
    accepted = f" (accepted: {ACCEPTED[key]})" if key in ACCEPTED else ""
    return f"{errors[0]['input']!r} is not {' or '.join(words)}{accepted}"


def validation_problems(error: ValidationError, source: str, branches: tuple[str, ...] = ()) -> str:
    """Every problem of a failed validation, one per line: `source: key.path: message`.

    Type errors are said in words (`quant[0].bits: 'four' is not an integer (or a list of them) (accepted:
    2..16 or a list of them)`); a union's type error at a key is dropped when a deeper key explains it.
    `branches`: the schema's names for its tagged unions' branches, left out of key paths."""
    by_location: dict[str, list[dict]] = {}
    for problem in error.errors():
        by_location.setdefault(_location(problem["loc"], branches), []).append(problem)
    lines = set()
    for location, problems in by_location.items():
        typed = [p for p in problems if p["type"] in TYPE_WORDS]
        deeper = any(other.startswith((location + ".", location + "[")) for other in by_location if other != location)
        if typed and not deeper:
            lines.add(f"{source}: {location}: {_type_problem(location, typed)}")
        lines.update(f"{source}: {location}: {_describe(p)}" for p in problems if p["type"] not in TYPE_WORDS)
    return "\n".join(sorted(lines))


def validate_document(
    schema: type[BaseModel], data: object, source: str, error: type[UserError], branches: tuple[str, ...] = ()
):
    """A parsed YAML document validated against `schema`; `error` lists every problem with its key path."""
    if data is None:
        raise error(f"{source}: the file is empty; expected a mapping of {', '.join(schema.model_fields)}")
    try:
        return schema.model_validate(data)
    except ValidationError as problem:
        raise error(validation_problems(problem, source, branches)) from None
