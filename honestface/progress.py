"""Progress reporting shared by the library, the command line and the nodes.

Long-running library functions take ``progress: ProgressCallback | None`` and call it as
``progress(done, total)``. The CLI passes a tqdm bar, the ComfyUI nodes a
``comfy.utils.ProgressBar`` (and their interrupt check, which may raise), tests nothing.
"""

from __future__ import annotations

from typing import Callable, Optional

ProgressCallback = Callable[[int, int], None]


def report(progress: Optional[ProgressCallback], done: int, total: int) -> None:
    """Call ``progress`` if one was given."""
    if progress is not None:
        progress(done, total)


def tqdm_progress(description: str, total: int, disable: bool = False) -> tuple[ProgressCallback, Callable[[], None]]:
    """A tqdm-backed callback and a ``close`` function for command-line use."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=description, unit="face", disable=disable)

    def update(done: int, total_: int) -> None:
        bar.total = total_
        bar.n = done
        bar.refresh()

    return update, bar.close
