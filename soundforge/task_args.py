"""The JSON arguments a task is deferred with, checked before the task runs.

Whoever can defer a job (`procrastinate defer`, SQL, an old worker) chooses them, so they are
untrusted: `checked_arguments` binds them to the task's signature (an unknown or missing name is
refused) and holds each to its annotation (`str`, `bool`, `int`, `X | None`), so `"false"`
never reads as true and a list never reaches a query as a PostgreSQL array. A refusal is
`BadTaskArgumentError`: permanent (no retry) and naming the argument; the values themselves
are checked where they are used (`music.parse_uuid` for row ids, the source parser, the
model registry).
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from soundforge.errors import PermanentError

P = ParamSpec("P")
R = TypeVar("R")
_CHECKED_TYPES = (str, bool, int, float)


class BadTaskArgumentError(PermanentError):
    """A task was deferred with an argument it cannot take (unknown, missing, wrong type)."""


def checked_arguments(task_name: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a task function (under `@blueprint.task`) so its keyword arguments are bound
    and type-checked before it runs; the first positional parameter may be the job context."""

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(function)
        hints = typing.get_type_hints(function)

        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                signature.bind(*args, **kwargs)
            except TypeError as error:
                raise BadTaskArgumentError(f"{task_name}: {error}") from None
            for name, value in kwargs.items():
                _check_type(task_name, name, value, hints.get(name))
            return function(*args, **kwargs)

        return wrapper

    return decorate


def _check_type(task_name: str, name: str, value: object, annotation: object) -> None:
    accepted = _accepted_types(annotation)
    if accepted is None:  # an annotation this check does not cover
        return
    if value is None and type(None) in accepted:
        return
    # bool is an int to Python, never to a task: `"model": true` or `"days": false` is wrong.
    if isinstance(value, bool) and bool not in accepted:
        ok = False
    elif isinstance(value, int) and float in accepted:
        ok = True
    else:
        ok = isinstance(value, tuple(t for t in accepted if t is not type(None)))
    if not ok:
        wanted = " or ".join("null" if t is type(None) else _json_name(t) for t in accepted)
        raise BadTaskArgumentError(
            f"{task_name}: argument {name!r} must be {wanted}, not {_json_name(type(value))}"
        )


def _accepted_types(annotation: object) -> tuple[type, ...] | None:
    if annotation in _CHECKED_TYPES:
        return (annotation,)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = typing.get_args(annotation)
        if all(member in _CHECKED_TYPES or member is type(None) for member in members):
            return tuple(members)
    return None


def _json_name(kind: type) -> str:
    names = {str: "a string", bool: "true or false", int: "a whole number",
             float: "a number", type(None): "null", list: "a list", dict: "an object"}  # fmt: skip
    return names.get(kind, kind.__name__)
