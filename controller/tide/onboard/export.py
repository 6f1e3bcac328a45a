"""`tide onboard --export DIR`: the recipe as a plain docker-compose bundle,
for admins who run the classic recipe by hand - the same files onboarding
deploys (tide.onboard.bundle), one folder per compose project, and a
README saying how to start them. Written whole or not at all: into a
temporary folder first, then renamed into place; a folder that is not an
earlier export is never overwritten.
"""

from __future__ import annotations

import os
import shutil
from importlib import resources
from pathlib import Path

import jinja2

from tide.onboard.bundle import File, Project
from tide.onboard.settings import Settings

MARKER = ".tide-export"
"""A file every export holds, so that exporting again may replace it."""


class ExportError(RuntimeError):
    """The bundle cannot be written where asked."""


def _local(project: Project, file: File) -> Path:
    """Where a project's file goes in the bundle: under its role's folder."""
    if file.path.is_relative_to(project.folder):
        return Path(project.role) / file.path.relative_to(project.folder)
    return Path(project.role) / "systemd" / file.path.name


def readme(settings: Settings, projects: list[Project]) -> str:
    text = resources.files("tide.onboard").joinpath("templates", "export-README.md.j2")
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701  (Markdown)
    )
    return env.from_string(text.read_text("utf-8")).render(
        settings=settings,
        projects=projects,
        images=sorted({p.image for p in projects}),
        local=_local,
    )


def export(settings: Settings, projects: list[Project], folder: Path) -> Path:
    """Write the bundle to `folder` (replacing an earlier export there)."""
    folder = folder.absolute()
    in_use = folder.exists() and (not folder.is_dir() or any(folder.iterdir()))
    if in_use and not (folder / MARKER).is_file():
        raise ExportError(
            f"{folder} exists and is not an earlier export: give an empty or new folder"
        )
    staging = folder.with_name(f".{folder.name}.tide-tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(mode=0o700, parents=True)
        for project in projects:
            for file in (*project.files, *project.units):
                _write(staging / _local(project, file), file)
        (staging / "README.md").write_text(readme(settings, projects), encoding="utf-8")
        (staging / MARKER).write_text("written by tide onboard --export\n", encoding="utf-8")
        old = folder.with_name(f".{folder.name}.tide-old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            folder.rename(old)
        staging.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ExportError(f"writing the bundle to {folder}: {exc}") from None
    return folder


def _write(path: Path, file: File) -> None:
    path.parent.mkdir(mode=0o700 if file.secret else 0o755, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file.mode)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(file.content)
    os.chmod(path, file.mode)  # whatever the umask


__all__ = ["MARKER", "ExportError", "export", "readme"]
