{{- define "qwen3vl.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{- define "qwen3vl.fullname" -}}
{{- printf "%s-%s" .Release.Name (include "qwen3vl.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{- define "qwen3vl.labels" -}}
app.kubernetes.io/name: {{ include "qwen3vl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "qwen3vl.metaLabels" . }}
{{- end }}

{{- /* Labels that are not selectors; pod templates add them to their selector labels. */ -}}
{{- define "qwen3vl.metaLabels" -}}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
qwen3vl/accelerator: {{ .Values.accelerator }}
qwen3vl/size: {{ .Values.model.size }}
{{- end }}

{{- define "qwen3vl.selectorLabels" -}}
app.kubernetes.io/name: {{ include "qwen3vl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: triton
{{- end }}

{{- define "qwen3vl.gatewaySelectorLabels" -}}
app.kubernetes.io/name: {{ include "qwen3vl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{- /* The gateway container; TRITON_GRPC_URL differs between sidecar and own Deployment. */ -}}
{{- define "qwen3vl.gatewayContainer" -}}
- name: gateway
  image: "{{ .Values.gateway.image.repository }}:{{ .Values.gateway.image.tag }}"
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  ports:
    - name: gateway
      containerPort: {{ .Values.gateway.port }}
      protocol: TCP
  env:
    # uvicorn listens on 127.0.0.1 unless told: the kubelet and the Service reach the pod's address.
    - name: GATEWAY_HOST
      value: 0.0.0.0
    - name: GATEWAY_PORT
      value: {{ int .Values.gateway.port | quote }}
    - name: SERVED_MODEL_NAME
      value: {{ .Values.gateway.servedModelName | quote }}
    - name: TRITON_GRPC_URL
      {{- if eq .Values.gateway.mode "sidecar" }}
      value: {{ printf "localhost:%d" (int .Values.triton.grpcPort) | quote }}
      {{- else }}
      value: {{ printf "%s:%d" (include "qwen3vl.fullname" .) (int .Values.triton.grpcPort) | quote }}
      {{- end }}
    {{- if eq .Values.gateway.mode "sidecar" }}
    # The sidecar reads the served checkpoint's tokenizer for /tokenize and truncation.
    - name: MODEL_PATH
      value: {{ .Values.model.embeddingPath | quote }}
    {{- end }}
    {{- if .Values.gateway.apiKeySecret }}
    - name: GATEWAY_API_KEY
      valueFrom:
        secretKeyRef:
          name: {{ .Values.gateway.apiKeySecret }}
          key: GATEWAY_API_KEY
    {{- end }}
  readinessProbe:
    httpGet:
      path: /health
      port: gateway
    periodSeconds: 5
  # /health and /ping answer 503 while Triton is not ready (minutes at startup): readiness, not liveness.
  livenessProbe:
    tcpSocket:
      port: gateway
    periodSeconds: 10
    failureThreshold: 6
  {{- if eq .Values.gateway.mode "sidecar" }}
  volumeMounts:
    - name: models
      mountPath: /models
      readOnly: true
  {{- end }}
  resources:
    {{- toYaml .Values.gateway.resources | nindent 4 }}
  securityContext:
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: [ALL]
{{- end }}
