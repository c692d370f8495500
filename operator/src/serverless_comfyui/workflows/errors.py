"""Exceptions raised by the workflow library."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

#: Machine-readable reasons a parameter is rejected (the ``rule`` of a :class:`ParamIssue`).
Rule = Literal[
    "body",  # the parameters are not a JSON object
    "unknown",  # no such parameter in this workflow
    "reserved",  # set by the server, never by the client (filename_prefix)
    "conflict",  # a parameter and its alias were both given
    "required",  # a required parameter is missing
    "type",  # wrong JSON type
    "min",  # below the minimum
    "max",  # above the maximum
    "multiple_of",  # not a multiple of the step
    "enum",  # not one of the allowed values
    "min_length",  # string too short
    "max_length",  # string too long
    "max_items",  # list too long
    "format",  # e.g. not a safe relative file name
    "unsupported",  # the workflow cannot honour it (only with strict validation)
]


class ParamIssue(BaseModel):
    """One problem with one request parameter, shaped for an HTTP 422 body."""

    model_config = ConfigDict(frozen=True)

    field: str
    rule: Rule
    message: str


class WorkflowError(Exception):
    """Base class of the workflow library's errors."""


class UnknownWorkflowError(WorkflowError, KeyError):
    """``WorkflowLibrary.get`` was asked for a workflow the library does not have."""

    def __init__(self, name: str, available: Iterable[str]) -> None:
        self.name = name
        self.available = sorted(available)
        super().__init__(name)

    def __str__(self) -> str:
        known = ", ".join(self.available) or "none"
        return f"unknown workflow {self.name!r} (available: {known})"


class ParameterError(WorkflowError, ValueError):
    """Request parameters failed validation; ``errors`` lists every problem found."""

    def __init__(self, workflow: str, errors: Sequence[ParamIssue]) -> None:
        self.workflow = workflow
        self.errors = list(errors)
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = "; ".join(f"{e.field or '<body>'}: {e.message}" for e in self.errors)
        return f"invalid parameters for workflow {self.workflow!r}: {parts}"

    def as_dicts(self) -> list[dict[str, str]]:
        """The errors as plain dicts ``{field, rule, message}`` (JSON-ready)."""
        return [e.model_dump() for e in self.errors]


class WorkflowDefinitionError(WorkflowError):
    """A workflow folder (workflow.json / params.yaml) is malformed or inconsistent."""

    def __init__(self, where: str, problems: Sequence[str]) -> None:
        self.where = where
        self.problems = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        lines = "\n".join(f"  - {p}" for p in self.problems)
        return f"invalid workflow definition {self.where}:\n{lines}"


class WorkflowLibraryNotFoundError(WorkflowError, FileNotFoundError):
    """No workflow library directory could be found."""
