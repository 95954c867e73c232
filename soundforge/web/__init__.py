"""The web dashboard (`soundforge serve`): an ASGI app whose handlers map requests to the same
library calls as the CLI and whose templates format the answers. Needs the `web` extra."""
