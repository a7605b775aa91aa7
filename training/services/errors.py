"""The one error the training services raise: a refusal with a message fit for the user."""

from __future__ import annotations


class TrainingError(ValueError):
    """A request the training services refuse, with a message fit for the user.

    ``field`` names the form / API field at fault, when there is one.
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class ModelFolderError(TrainingError):
    """A folder that is not a usable Hugging Face model folder."""
