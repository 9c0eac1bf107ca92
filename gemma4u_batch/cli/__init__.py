"""Typer front end: thin commands that build a JobConfig and call run_job."""

from __future__ import annotations

from .app import app, main

__all__ = ["app", "main"]
