"""SoundForge's Procrastinate tasks, one Blueprint: `soundforge.import`, `soundforge.download`,
`soundforge.separate`, `soundforge.analyze` and the maintenance tasks. Thin by design: each
moves its job row through the status machine (`soundforge.stage_runner`) around one engine
call."""

from soundforge.tasks import maintenance, stages  # noqa: F401  (registers the tasks)
from soundforge.tasks.blueprint import blueprint

__all__ = ["blueprint"]
