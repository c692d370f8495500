"""The workflow library: ComfyUI workflows in API format, each with a declarative parameter map.

Typical use::

    library = load_library()                      # $SERVERLESS_COMFYUI_WORKFLOWS_DIR or ./workflows
    workflow = library.get("flux_dev_t5fp8")      # UnknownWorkflowError if absent
    params = workflow.validate_params(body)       # ParameterError(.errors) -> HTTP 422
    result = workflow.render(params, prompt_id=prompt_id, output_prefix="api")
    # POST {"prompt": result.graph, "prompt_id": prompt_id} to ComfyUI; report result.seed
    # and result.warnings (e.g. negative_prompt ignored by Flux) to the client.

See ``workflows/README.md`` for the file formats.
"""

from .errors import (
    ParameterError,
    ParamIssue,
    UnknownWorkflowError,
    WorkflowDefinitionError,
    WorkflowError,
    WorkflowLibraryNotFoundError,
)
from .library import (
    WORKFLOWS_DIR_ENV,
    Workflow,
    WorkflowLibrary,
    default_workflows_dir,
    load_library,
    load_workflow,
)
from .render import RenderResult, filename_prefix_for
from .spec import LoraChain, ModelFile, ParamSpec, WorkflowSpec
from .validation import LoraRef, ValidatedParams

__all__ = [
    "WORKFLOWS_DIR_ENV",
    "LoraChain",
    "LoraRef",
    "ModelFile",
    "ParamIssue",
    "ParamSpec",
    "ParameterError",
    "RenderResult",
    "UnknownWorkflowError",
    "ValidatedParams",
    "Workflow",
    "WorkflowDefinitionError",
    "WorkflowError",
    "WorkflowLibrary",
    "WorkflowLibraryNotFoundError",
    "WorkflowSpec",
    "default_workflows_dir",
    "filename_prefix_for",
    "load_library",
    "load_workflow",
]
