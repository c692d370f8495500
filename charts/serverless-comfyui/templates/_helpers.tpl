{{/*
Named helpers of the serverless-comfyui chart. Everything here is a pure function of the values
and the release: no `lookup`, no randomness, no clock, so `helm template` renders the same bytes
every time (GitOps).
*/}}

{{/* Chart name, overridable. */}}
{{- define "serverless-comfyui.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every object name: the release name, unless it lacks the chart name. */}}
{{- define "serverless-comfyui.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* `name-version` for the helm.sh/chart label. */}}
{{- define "serverless-comfyui.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select a component's pods. Call with (dict "ctx" $ "component" "proxy"). */}}
{{- define "serverless-comfyui.selectorLabels" -}}
app.kubernetes.io/name: {{ include "serverless-comfyui.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* All recommended labels. Call with (dict "ctx" $ "component" "proxy"). */}}
{{- define "serverless-comfyui.labels" -}}
helm.sh/chart: {{ include "serverless-comfyui.chart" .ctx }}
{{ include "serverless-comfyui.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: serverless-comfyui
{{- end -}}

{{/* Name of a component's object: <fullname>-<component>. Call with (dict "ctx" $ "component" "x"). */}}
{{- define "serverless-comfyui.componentName" -}}
{{- printf "%s-%s" (include "serverless-comfyui.fullname" .ctx) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of a cluster-scoped object: unique per release namespace too. */}}
{{- define "serverless-comfyui.clusterName" -}}
{{- printf "%s-%s-%s" .ctx.Release.Namespace (include "serverless-comfyui.fullname" .ctx) .component -}}
{{- end -}}

{{- define "serverless-comfyui.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "serverless-comfyui.componentName" (dict "ctx" . "component" "operator")) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "serverless-comfyui.proxy.serviceAccountName" -}}
{{- if .Values.proxy.serviceAccount.create -}}
{{- default (include "serverless-comfyui.componentName" (dict "ctx" . "component" "proxy")) .Values.proxy.serviceAccount.name -}}
{{- else -}}
{{- required "proxy.serviceAccount.name is required when proxy.serviceAccount.create is false" .Values.proxy.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag of an image block. */}}
{{- define "serverless-comfyui.image" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{/* The namespaces served, as a JSON list; [] means the whole cluster. */}}
{{- define "serverless-comfyui.namespacesJSON" -}}
{{- if .Values.rbac.clusterWide -}}
[]
{{- else -}}
{{- prepend .Values.watchNamespaces .Release.Namespace | uniq | toJson -}}
{{- end -}}
{{- end -}}

{{/* The namespaces that get Roles (namespaced mode), one per line. */}}
{{- define "serverless-comfyui.roleNamespaces" -}}
{{- range (prepend .Values.watchNamespaces .Release.Namespace | uniq) }}
{{ . }}
{{- end -}}
{{- end -}}

{{/* Does the chart create the models claim? "true" or "". */}}
{{- define "serverless-comfyui.createClaim" -}}
{{- if and (not .Values.persistence.existingClaim) (not .Values.vksID) -}}
true
{{- end -}}
{{- end -}}

{{/* Name of the models claim: existingClaim, else claimName (created, or the VKS platform's). */}}
{{- define "serverless-comfyui.claimName" -}}
{{- default .Values.persistence.claimName .Values.persistence.existingClaim -}}
{{- end -}}

{{/*
The FluxWorkflow's `storage`, from the seed-compatible model.volumeMounts: the last segment of
each mountPath names the ComfyUI folder (models, input, output), subPath the folder in the claim.
*/}}
{{- define "serverless-comfyui.storage" -}}
{{- $storage := dict "claimName" (include "serverless-comfyui.claimName" .) -}}
{{- $keys := dict "models" "modelsSubPath" "input" "inputSubPath" "output" "outputSubPath" -}}
{{- range $i, $mount := .Values.model.volumeMounts -}}
{{- $folder := base (trimSuffix "/" $mount.mountPath) -}}
{{- $key := get $keys $folder -}}
{{- if not $key -}}
{{- fail (printf "model.volumeMounts[%d].mountPath %q: the ComfyUI pods mount only the models, input and output folders of the claim, so mountPath must end in /models, /input or /output" $i $mount.mountPath) -}}
{{- end -}}
{{- if hasKey $storage $key -}}
{{- fail (printf "model.volumeMounts[%d].mountPath %q: a second mount of the %s folder (one subPath per folder)" $i $mount.mountPath $folder) -}}
{{- end -}}
{{- $_ := set $storage $key $mount.subPath -}}
{{- end -}}
{{- if not (hasKey $storage "modelsSubPath") -}}
{{- /* the FluxWorkflow's default, written out so that the devpod mounts the same folder */ -}}
{{- $_ := set $storage "modelsSubPath" "apps/serverless-comfyui/models" -}}
{{- end -}}
{{- toYaml $storage -}}
{{- end -}}

{{- define "serverless-comfyui.hfSecretName" -}}
{{- if .Values.huggingFace.existingSecret -}}
{{- .Values.huggingFace.existingSecret -}}
{{- else if .Values.huggingFace.token -}}
{{- include "serverless-comfyui.componentName" (dict "ctx" . "component" "hf-token") -}}
{{- end -}}
{{- end -}}

{{- define "serverless-comfyui.apiKeysSecretName" -}}
{{- if .Values.proxy.apiKeys.existingSecret -}}
{{- .Values.proxy.apiKeys.existingSecret -}}
{{- else if .Values.proxy.apiKeys.keys -}}
{{- include "serverless-comfyui.componentName" (dict "ctx" . "component" "proxy-api-keys") -}}
{{- end -}}
{{- end -}}

{{- define "serverless-comfyui.proxy.serviceName" -}}
{{- include "serverless-comfyui.componentName" (dict "ctx" . "component" "proxy") -}}
{{- end -}}

{{/* Lease electing the proxy replica that writes scale decisions. */}}
{{- define "serverless-comfyui.proxy.leaseName" -}}
{{- include "serverless-comfyui.componentName" (dict "ctx" . "component" "proxy-autoscaler") -}}
{{- end -}}

{{/* Base URL where clients reach the proxy. */}}
{{- define "serverless-comfyui.proxyURL" -}}
{{- $proxy := .Values.proxy -}}
{{- if $proxy.publicURL -}}
{{- trimSuffix "/" $proxy.publicURL -}}
{{- else if and $proxy.ingress.enabled $proxy.ingress.host -}}
{{- printf "%s://%s%s" (ternary "https" "http" (ne $proxy.ingress.tlsSecretName "")) $proxy.ingress.host (trimSuffix "/" $proxy.ingress.path) -}}
{{- else if .Values.vksID -}}
{{- printf "https://%s-x-%s-x-%s.%s" (include "serverless-comfyui.proxy.serviceName" .) .Release.Namespace .Values.vksID .Values.vksProxyDomain -}}
{{- else -}}
{{- printf "http://%s.%s.svc:%d" (include "serverless-comfyui.proxy.serviceName" .) .Release.Namespace (int $proxy.service.port) -}}
{{- end -}}
{{- end -}}

{{/* Checks JSON schema cannot express; each fails with a message naming the value. */}}
{{- define "serverless-comfyui.validate" -}}
{{- $model := .Values.model -}}
{{- if gt (int $model.minReplicas) (int $model.maxReplicas) -}}
{{- fail (printf "model.minReplicas (%d) must not exceed model.maxReplicas (%d)" (int $model.minReplicas) (int $model.maxReplicas)) -}}
{{- end -}}
{{- $profile := index (splitList ":" $model.resourceProfile) 0 -}}
{{- if not (hasKey .Values.resourceProfiles $profile) -}}
{{- fail (printf "model.resourceProfile %q: unknown profile %q; known profiles: %s (add it under resourceProfiles)" $model.resourceProfile $profile (keys .Values.resourceProfiles | sortAlpha | join ", ")) -}}
{{- end -}}
{{- $workflow := $model.workflow -}}
{{- if eq (hasKey $workflow "name") (hasKey $workflow "configMapRef") -}}
{{- fail "model.workflow: set exactly one of name (a library workflow) and configMapRef (a ConfigMap); to use a ConfigMap, also set model.workflow.name to null" -}}
{{- end -}}
{{- with $workflow.warmup -}}
{{- if eq (hasKey . "name") (hasKey . "configMapRef") -}}
{{- fail "model.workflow.warmup: set exactly one of name and configMapRef" -}}
{{- end -}}
{{- end -}}
{{- $names := list -}}
{{- range $model.models -}}
{{- if has .name $names -}}
{{- fail (printf "model.models: the file name %q appears twice (names are unique per FluxWorkflow)" .name) -}}
{{- end -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- $_ := include "serverless-comfyui.storage" . -}}
{{- if and .Values.proxy.enabled (gt (int .Values.proxy.replicas) 1) (not .Values.proxy.api.storeUrl) -}}
{{- fail (printf "proxy.replicas is %d but proxy.api.storeUrl is empty: the file task store serves one replica; set proxy.api.storeUrl to a redis:// URL" (int .Values.proxy.replicas)) -}}
{{- end -}}
{{- end -}}
