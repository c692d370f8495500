"""The kopf operator: turns each FluxWorkflow into a model-download Job, a Deployment of ComfyUI
pods, a Service and a workflow ConfigMap, and reports where things stand in its status."""
