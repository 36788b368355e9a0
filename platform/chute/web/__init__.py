"""The web page: server-rendered shells (``pages``), the data they read live (``board``) and that
data's bounded queries (``queries``). Like ``chute.api``, an HTTP face: it may import FastAPI.

``app.include_router(chute.web.router)`` adds all of it; ``chute.api.deps`` opens the shells and
static files (its ``SHELL_PATHS`` and ``SHELL_PREFIX``) and keeps every data route behind the key."""

from fastapi import APIRouter

from chute.web import board, pages

router = APIRouter()
router.include_router(pages.router)
router.include_router(board.router)

__all__ = ["router"]
