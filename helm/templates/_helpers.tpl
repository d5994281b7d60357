{{/* ---------------------------------------------------------------- names and labels */}}

{{- define "orbilnot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-scoped prefix of every object name: "orbilnot" for `helm install orbilnot ./helm`. */}}
{{- define "orbilnot.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Object name of one component: (dict "root" $ "component" "billing") */}}
{{- define "orbilnot.componentName" -}}
{{- printf "%s-%s" (include "orbilnot.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object of one component: (dict "root" $ "component" "billing") */}}
{{- define "orbilnot.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "orbilnot.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: {{ include "orbilnot.name" .root }}
{{- end -}}

{{/* Pod selector of one component: (dict "root" $ "component" "billing") */}}
{{- define "orbilnot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "orbilnot.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* ---------------------------------------------------------------- the orbilnot image */}}

{{- define "orbilnot.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* ------------------------------------------------- PostgreSQL: bundled or external */}}

{{- define "orbilnot.postgresql.host" -}}
{{- if .Values.postgresql.enabled -}}
{{- include "orbilnot.componentName" (dict "root" . "component" "postgresql") -}}
{{- else -}}
{{- .Values.externalDatabase.host -}}
{{- end -}}
{{- end -}}

{{- define "orbilnot.postgresql.port" -}}
{{- if .Values.postgresql.enabled -}}5432{{- else -}}{{ .Values.externalDatabase.port }}{{- end -}}
{{- end -}}

{{- define "orbilnot.postgresql.database" -}}
{{- if .Values.postgresql.enabled -}}{{ .Values.postgresql.database }}{{- else -}}{{ .Values.externalDatabase.database }}{{- end -}}
{{- end -}}

{{- define "orbilnot.postgresql.username" -}}
{{- if .Values.postgresql.enabled -}}{{ .Values.postgresql.username }}{{- else -}}{{ .Values.externalDatabase.username }}{{- end -}}
{{- end -}}

{{- define "orbilnot.postgresql.secretName" -}}
{{- if .Values.postgresql.enabled -}}
{{- include "orbilnot.componentName" (dict "root" . "component" "postgresql") -}}
{{- else -}}
{{- .Values.externalDatabase.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "orbilnot.postgresql.secretKey" -}}
{{- if .Values.postgresql.enabled -}}password{{- else -}}{{ .Values.externalDatabase.existingSecretPasswordKey }}{{- end -}}
{{- end -}}

{{/*
The password of the bundled database: the value if given, else the one already stored in the
release's Secret (so upgrades keep it), else a new random one. `lookup` returns nothing under
`helm template` and `--dry-run`, which then show a fresh random password.
*/}}
{{- define "orbilnot.postgresql.password" -}}
{{- if .Values.postgresql.password -}}
{{- .Values.postgresql.password -}}
{{- else -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (include "orbilnot.postgresql.secretName" .) -}}
{{- if and $secret $secret.data (index $secret.data "password") -}}
{{- index $secret.data "password" | b64dec -}}
{{- else -}}
{{- randAlphaNum 32 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The password of one service's own database role (SPEC §9), key "<service>-password" of the same
Secret: generated on install and kept on upgrades like the owner's; never a value.
(dict "root" $ "service" "billing")
*/}}
{{- define "orbilnot.postgresql.servicePassword" -}}
{{- $key := printf "%s-password" .service -}}
{{- $secret := lookup "v1" "Secret" .root.Release.Namespace (include "orbilnot.postgresql.secretName" .root) -}}
{{- if and $secret $secret.data (index $secret.data $key) -}}
{{- index $secret.data $key | b64dec -}}
{{- else -}}
{{- randAlphaNum 32 -}}
{{- end -}}
{{- end -}}

{{/* ------------------------------------------------------ Kafka: bundled or external */}}

{{- define "orbilnot.kafka.bootstrapServers" -}}
{{- if .Values.kafka.enabled -}}
{{- printf "%s:9092" (include "orbilnot.componentName" (dict "root" . "component" "kafka")) -}}
{{- else -}}
{{- .Values.externalKafka.bootstrapServers -}}
{{- end -}}
{{- end -}}

{{/* --------------------------------------------------- configuration sanity checks */}}

{{/* Included by every template that depends on the infrastructure settings. */}}
{{- define "orbilnot.validate" -}}
{{- if and (not .Values.postgresql.enabled) (not .Values.externalDatabase.host) -}}
{{- fail "\n\nNo database configured: postgresql.enabled is false and externalDatabase.host is empty.\nEither keep the bundled PostgreSQL (postgresql.enabled=true) or set externalDatabase.host, .port, .database, .username and .existingSecret." -}}
{{- end -}}
{{- if and (not .Values.postgresql.enabled) (not .Values.externalDatabase.existingSecret) -}}
{{- fail "\n\nexternalDatabase.existingSecret is empty: with postgresql.enabled=false the database password is read from an existing Secret (key externalDatabase.existingSecretPasswordKey)." -}}
{{- end -}}
{{- if and .Values.postgresql.enabled .Values.externalDatabase.host -}}
{{- fail "\n\nexternalDatabase.host is set but postgresql.enabled is true: set postgresql.enabled=false to use the external database (or clear externalDatabase.host)." -}}
{{- end -}}
{{- if and (not .Values.kafka.enabled) (not .Values.externalKafka.bootstrapServers) -}}
{{- fail "\n\nNo Kafka configured: kafka.enabled is false and externalKafka.bootstrapServers is empty.\nEither keep the bundled Kafka (kafka.enabled=true) or set externalKafka.bootstrapServers (host:port[,host:port...])." -}}
{{- end -}}
{{- if and .Values.auth.enabled (not .Values.auth.issuerUrl) -}}
{{- fail "\n\nauth.enabled is true but auth.issuerUrl is empty: set it to your OpenID Connect issuer (the tokens' iss), e.g. https://sso.example.com/realms/orbilnot." -}}
{{- end -}}
{{- if and .Values.kafka.enabled .Values.externalKafka.bootstrapServers -}}
{{- fail "\n\nexternalKafka.bootstrapServers is set but kafka.enabled is true: set kafka.enabled=false to use the external Kafka (or clear externalKafka.bootstrapServers)." -}}
{{- end -}}
{{- end -}}

{{/* ------------------------------------------------------- pieces of the app pods */}}

{{/*
The migration's DATABASE_URL: the owner role, composed from the ConfigMap (DATABASE_USER, _HOST,
_PORT, _NAME, via envFrom) and the password from the Secret, with Kubernetes' $(VAR) expansion:
the app reads only DATABASE_URL, and the password never lands in a ConfigMap. With it, the
services' passwords (BILLING_DB_PASSWORD, …), which `orbilnot migrate` sets on their roles.
*/}}
{{- define "orbilnot.databaseEnv" -}}
- name: DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "orbilnot.postgresql.secretName" . }}
      key: {{ include "orbilnot.postgresql.secretKey" . }}
- name: DATABASE_URL
  value: "postgresql://$(DATABASE_USER):$(DATABASE_PASSWORD)@$(DATABASE_HOST):$(DATABASE_PORT)/$(DATABASE_NAME){{ include "orbilnot.databaseQuery" . }}"
{{- range $service := list "billing" "order" "notification" }}
- name: {{ printf "%s_DB_PASSWORD" (upper $service) }}
  valueFrom:
    secretKeyRef:
      name: {{ include "orbilnot.postgresql.secretName" $ }}
      key: {{ $service }}-password
{{- end }}
{{- end -}}

{{/*
A service's DATABASE_URL: its own role (orbilnot_<service>, rights on its own schema only) and
its own password from the Secret (key "<service>-password"). (dict "root" $ "service" "billing")
*/}}
{{- define "orbilnot.serviceDatabaseEnv" -}}
- name: DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "orbilnot.postgresql.secretName" .root }}
      key: {{ .service }}-password
- name: DATABASE_URL
  value: "postgresql://orbilnot_{{ .service }}:$(DATABASE_PASSWORD)@$(DATABASE_HOST):$(DATABASE_PORT)/$(DATABASE_NAME){{ include "orbilnot.databaseQuery" .root }}"
{{- end -}}

{{- define "orbilnot.databaseQuery" -}}
{{- if and (not .Values.postgresql.enabled) .Values.externalDatabase.query -}}
{{- printf "?%s" .Values.externalDatabase.query -}}
{{- end -}}
{{- end -}}

{{/* envFrom of every container that talks to PostgreSQL and Kafka. */}}
{{- define "orbilnot.serviceEnvFrom" -}}
- configMapRef:
    name: {{ include "orbilnot.componentName" (dict "root" . "component" "config") }}
{{- end -}}

{{/* Restricted pod security for the orbilnot image (it runs as uid 10001, see Dockerfile). */}}
{{- define "orbilnot.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "orbilnot.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* The initContainer that holds a service pod until the migration Job has run; it connects as
the service itself. (dict "root" $ "service" "billing") */}}
{{- define "orbilnot.waitForMigrations" -}}
- name: wait-for-migrations
  image: {{ include "orbilnot.image" .root }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  command: ["orbilnot", "migrate", "--wait", "--timeout", {{ .root.Values.migrations.waitTimeoutSeconds | quote }}]
  envFrom:
    {{- include "orbilnot.serviceEnvFrom" .root | nindent 4 }}
  env:
    {{- include "orbilnot.serviceDatabaseEnv" . | nindent 4 }}
  resources:
    {{- toYaml .root.Values.migrations.resources | nindent 4 }}
  securityContext:
    {{- include "orbilnot.containerSecurityContext" . | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
{{- end -}}

{{/* Pod annotations that roll the pods when their configuration changes. */}}
{{- define "orbilnot.configChecksum" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- end -}}

{{/* Authentication settings, the same for the services and the gateway (README "Authentication"). */}}
{{- define "orbilnot.authConfig" -}}
AUTH_MODE: {{ ternary "oidc" "off" .Values.auth.enabled | quote }}
{{- if .Values.auth.enabled }}
OIDC_ISSUER_URL: {{ .Values.auth.issuerUrl | quote }}
OIDC_AUDIENCE: {{ .Values.auth.audience | quote }}
{{- end }}
{{- end -}}
