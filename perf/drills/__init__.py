"""Drills: what `make overload`, `make recovery` and `make reliability` run against a server."""
