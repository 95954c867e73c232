"""The Blueprint every SoundForge task is registered on."""

from procrastinate import Blueprint

blueprint = Blueprint()
