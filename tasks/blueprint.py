"""The Blueprint every SoundForge task is registered on, and `task`, the decorator that
registers one with its deferred arguments checked first (`soundforge.task_args`)."""

from collections.abc import Callable
from typing import Any

from procrastinate import Blueprint
from procrastinate.retry import RetryValue
from procrastinate.tasks import Task

from soundforge.task_args import checked_arguments

blueprint = Blueprint()


def task(
    *, name: str, queue: str, pass_context: bool = False, retry: RetryValue = False
) -> Callable[[Callable[..., Any]], Task[Any, Any, Any]]:
    """`@blueprint.task(...)` over `checked_arguments(name)`: an unknown, missing or wrongly
    typed argument fails the job at once (never retried), naming the argument."""

    def register(function: Callable[..., Any]) -> Task[Any, Any, Any]:
        checked = checked_arguments(name)(function)
        if pass_context:
            return blueprint.task(name=name, queue=queue, pass_context=True, retry=retry)(checked)
        return blueprint.task(name=name, queue=queue, retry=retry)(checked)

    return register
