{{/*
The operator's rules, in each served namespace (or cluster-wide). Each rule says which code
needs it; tests/integration/test_chart_rbac.py fails on anything more.
*/}}
{{- define "serverless-comfyui.operator.rules" -}}
# kopf watches FluxWorkflows and keeps its progress in their annotations.
- apiGroups: [serverless-comfyui.io]
  resources: [fluxworkflows]
  verbs: [get, list, watch, patch]
# The reconcile writes status (kopf patches the status subresource).
- apiGroups: [serverless-comfyui.io]
  resources: [fluxworkflows/status]
  verbs: [get, patch]
# Owned objects carry ownerReferences with blockOwnerDeletion, which clusters running the
# OwnerReferencesPermissionEnforcement admission plugin (e.g. OpenShift) allow only with this.
- apiGroups: [serverless-comfyui.io]
  resources: [fluxworkflows/finalizers]
  verbs: [update]
# ComfyUI Deployment and model-download Job: server-side apply (create + patch), delete,
# and kopf watches them to reconcile their owner.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
# Workflow ConfigMap and headless Service: server-side apply and delete; a workflow can also
# come from a user's ConfigMap (get).
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [get, create, patch, delete]
# ComfyUI and downloader pods: readiness and termination messages.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# Existence checks of the Hugging Face token Secret and the models claim.
- apiGroups: [""]
  resources: [secrets, persistentvolumeclaims]
  verbs: [get]
# kopf and the reconcile post Events on FluxWorkflows.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}

{{/* The proxy's rules, in each served namespace (or cluster-wide). */}}
{{- define "serverless-comfyui.proxy.rules" -}}
# Which applications exist (routing by the `model` field) and their settings.
- apiGroups: [serverless-comfyui.io]
  resources: [fluxworkflows]
  verbs: [get, list, watch]
# The autoscaler: read and write desired replicas through the scale subresource only.
- apiGroups: [serverless-comfyui.io]
  resources: [fluxworkflows/scale]
  verbs: [get, patch, update]
# Pod addresses and readiness (watch); pod-deletion-cost on scale-down (patch).
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, patch]
# Scale decisions and wake-ups reported as Events.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}
