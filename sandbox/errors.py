"""Exceptions raised by the sandbox; each message is one line naming the problem and the fix."""

from __future__ import annotations


class SandboxError(Exception):
    """Base class for every error the sandbox raises on purpose."""


class WorkspaceError(SandboxError):
    """The workspace cannot be created, opened or moved to the requested state."""


class TemplateError(WorkspaceError):
    """An unknown or unusable workspace template."""


class EditError(SandboxError):
    """An edit was refused; the workspace files are unchanged."""


class GitError(SandboxError):
    """A git command failed."""
