"""Test helpers shared across test modules: loopback servers that speak real HTTP on real
sockets (a generic file server, a Spotify Web API stand-in) and synthesized audio."""
