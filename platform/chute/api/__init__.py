"""The HTTP face of Chute (FastAPI). Only this package imports FastAPI."""

from chute.api.app import create_app

__all__ = ["create_app"]
