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

{{/*
An image reference: (dict "root" $ "image" .Values.x.image "defaultTag" "1.0"). global.imageRegistry
is put in front of the repository; a digest pins the image ("repo:tag@sha256:...").
*/}}
{{- define "orbilnot.imageRef" -}}
{{- $repository := .image.repository -}}
{{- with .root.Values.global.imageRegistry -}}
{{- $repository = printf "%s/%s" (trimSuffix "/" .) $repository -}}
{{- end -}}
{{- $ref := printf "%s:%s" $repository (default .defaultTag .image.tag) -}}
{{- with .image.digest -}}
{{- $ref = printf "%s@%s" $ref . -}}
{{- end -}}
{{- $ref -}}
{{- end -}}

{{- define "orbilnot.image" -}}
{{- include "orbilnot.imageRef" (dict "root" . "image" .Values.image "defaultTag" .Chart.AppVersion) -}}
{{- end -}}

{{- define "orbilnot.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "orbilnot.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
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

{{/* True (non-empty) when the chart creates the bundled database's Secret itself. */}}
{{- define "orbilnot.postgresql.createSecret" -}}
{{- if and .Values.postgresql.enabled (not .Values.postgresql.existingSecret) -}}true{{- end -}}
{{- end -}}

{{- define "orbilnot.postgresql.secretName" -}}
{{- if .Values.postgresql.enabled -}}
{{- default (include "orbilnot.componentName" (dict "root" . "component" "postgresql")) .Values.postgresql.existingSecret -}}
{{- else -}}
{{- .Values.externalDatabase.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "orbilnot.postgresql.secretKey" -}}
{{- if .Values.postgresql.enabled -}}
{{- if .Values.postgresql.existingSecret -}}{{ .Values.postgresql.existingSecretPasswordKey }}{{- else -}}password{{- end -}}
{{- else -}}
{{- .Values.externalDatabase.existingSecretPasswordKey -}}
{{- end -}}
{{- end -}}

{{/*
The password of the bundled database: the value if given, else the one already stored in the
release's Secret (kept on upgrade and, with its resource-policy keep, across uninstall and a new
install), else a new random one. Computed once per render (memoised in .Values), so the Secret
and the pods' checksum see the same value. `lookup` returns nothing under `helm template` and
`--dry-run`, which then show a fresh random password.
*/}}
{{- define "orbilnot.postgresql.password" -}}
{{- if not (hasKey .Values.postgresql "renderedPassword") -}}
{{- $password := .Values.postgresql.password -}}
{{- if not $password -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (include "orbilnot.postgresql.secretName" .) -}}
{{- if and $secret $secret.data (index $secret.data "password") -}}
{{- $password = index $secret.data "password" | b64dec -}}
{{- else -}}
{{- $password = randAlphaNum 32 -}}
{{- end -}}
{{- end -}}
{{- $_ := set .Values.postgresql "renderedPassword" $password -}}
{{- end -}}
{{- .Values.postgresql.renderedPassword -}}
{{- end -}}

{{/*
A digest of the database password, as a pod annotation: pods roll when it changes. For a Secret
the chart does not own (existingSecret) its current data is looked up at install/upgrade time.
*/}}
{{- define "orbilnot.secretChecksum" -}}
{{- if include "orbilnot.postgresql.createSecret" . -}}
{{- $passwords := list (include "orbilnot.postgresql.password" .) -}}
{{- range $service := list "billing" "order" "notification" -}}
{{- $passwords = append $passwords (include "orbilnot.postgresql.servicePassword" (dict "root" $ "service" $service)) -}}
{{- end -}}
{{- join "\n" $passwords | sha256sum -}}
{{- else -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (include "orbilnot.postgresql.secretName" .) -}}
{{- (($secret | default dict).data | default dict) | toJson | sha256sum -}}
{{- end -}}
{{- end -}}

{{/*
The password of one service's own database role (SPEC §9), key "<service>-password" of the same
Secret: generated on install and kept on upgrades like the owner's; never a value.
(dict "root" $ "service" "billing")
*/}}
{{- define "orbilnot.postgresql.servicePassword" -}}
{{- $key := printf "%s-password" .service -}}
{{- $memo := .root.Values.postgresql -}}
{{- if not (hasKey $memo (printf "rendered-%s" $key)) -}}
{{- $password := "" -}}
{{- $secret := lookup "v1" "Secret" .root.Release.Namespace (include "orbilnot.postgresql.secretName" .root) -}}
{{- if and $secret $secret.data (index $secret.data $key) -}}
{{- $password = index $secret.data $key | b64dec -}}
{{- else -}}
{{- $password = randAlphaNum 32 -}}
{{- end -}}
{{- $_ := set $memo (printf "rendered-%s" $key) $password -}}
{{- end -}}
{{- index $memo (printf "rendered-%s" $key) -}}
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
{{- if and .Values.kafka.enabled (gt (int .Values.config.topicReplicationFactor) 1) -}}
{{- fail "\n\nconfig.topicReplicationFactor is above 1, but the bundled Kafka is a single broker: keep 1, or use an external cluster (kafka.enabled=false)." -}}
{{- end -}}
{{- with .Values.externalKafka -}}
{{- if and (not $.Values.kafka.enabled) (hasPrefix "SASL_" .securityProtocol) (or (not .sasl.username) (not .sasl.existingSecret)) -}}
{{- fail (printf "\n\nexternalKafka.securityProtocol is %s: set externalKafka.sasl.username and externalKafka.sasl.existingSecret (the Secret with the password)." .securityProtocol) -}}
{{- end -}}
{{- end -}}
{{- include "orbilnot.validateConnectionBudget" . -}}
{{- end -}}

{{/* ------------------------------------------------------- pieces of the app pods */}}

{{/*
The migration's database settings: DATABASE_URL of the owner role without a password,
composed from the ConfigMap (DATABASE_HOST, _PORT, _NAME, via envFrom) with Kubernetes' $(VAR)
expansion, and DATABASE_PASSWORD from the Secret: the application puts the password into the
URL percent-encoded (any characters work), and no password lands in a ConfigMap. With them, the
services' passwords (BILLING_DB_PASSWORD, …), which `orbilnot migrate` sets on their roles.
*/}}
{{- define "orbilnot.databaseEnv" -}}
- name: DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "orbilnot.postgresql.secretName" . }}
      key: {{ include "orbilnot.postgresql.secretKey" . }}
- name: DATABASE_URL
  value: "postgresql://{{ include "orbilnot.postgresql.username" . | urlquery }}@$(DATABASE_HOST):$(DATABASE_PORT)/$(DATABASE_NAME){{ include "orbilnot.databaseQuery" . }}"
{{- range $service := list "billing" "order" "notification" }}
- name: {{ printf "%s_DB_PASSWORD" (upper $service) }}
  valueFrom:
    secretKeyRef:
      name: {{ include "orbilnot.postgresql.secretName" $ }}
      key: {{ $service }}-password
{{- end }}
{{- end -}}

{{/*
A service's database settings: its own role (orbilnot_<service>, rights on its own schema only)
in DATABASE_URL, and its own password from the Secret (key "<service>-password") as
DATABASE_PASSWORD, which the application encodes into the URL. (dict "root" $ "service" "billing")
*/}}
{{- define "orbilnot.serviceDatabaseEnv" -}}
- name: DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "orbilnot.postgresql.secretName" .root }}
      key: {{ .service }}-password
- name: DATABASE_URL
  value: "postgresql://orbilnot_{{ .service }}@$(DATABASE_HOST):$(DATABASE_PORT)/$(DATABASE_NAME){{ include "orbilnot.databaseQuery" .root }}"
{{- end -}}

{{- define "orbilnot.databaseQuery" -}}
{{- if and (not .Values.postgresql.enabled) .Values.externalDatabase.query -}}
{{- printf "?%s" .Values.externalDatabase.query -}}
{{- end -}}
{{- end -}}

{{/* True (non-empty) when the services authenticate to an external Kafka with SASL. */}}
{{- define "orbilnot.kafka.sasl" -}}
{{- if and (not .Values.kafka.enabled) (hasPrefix "SASL_" .Values.externalKafka.securityProtocol) -}}true{{- end -}}
{{- end -}}

{{/* True (non-empty) when a CA certificate for the external Kafka is mounted. */}}
{{- define "orbilnot.kafka.caMounted" -}}
{{- if and (not .Values.kafka.enabled) .Values.externalKafka.tls.caSecret (has .Values.externalKafka.securityProtocol (list "SSL" "SASL_SSL")) -}}true{{- end -}}
{{- end -}}

{{- define "orbilnot.kafka.caDirectory" -}}/etc/orbilnot/kafka-ca{{- end -}}

{{/* Where Kafka is and how its clients authenticate: the services' and the gateway's config. */}}
{{- define "orbilnot.kafkaClientConfig" -}}
KAFKA_BOOTSTRAP_SERVERS: {{ include "orbilnot.kafka.bootstrapServers" . | quote }}
ORDER_EVENT_TOPIC: {{ .Values.config.orderEventTopic | quote }}
PAYMENT_EVENT_TOPIC: {{ .Values.config.paymentEventTopic | quote }}
{{- if not .Values.kafka.enabled }}
{{- with .Values.externalKafka }}
KAFKA_SECURITY_PROTOCOL: {{ .securityProtocol | quote }}
{{- if include "orbilnot.kafka.sasl" $ }}
KAFKA_SASL_MECHANISM: {{ .sasl.mechanism | quote }}
KAFKA_SASL_USERNAME: {{ .sasl.username | quote }}
{{- end }}
{{- if include "orbilnot.kafka.caMounted" $ }}
KAFKA_SSL_CAFILE: {{ printf "%s/%s" (include "orbilnot.kafka.caDirectory" $) .tls.caSecretKey | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The SASL password of the external Kafka, from its Secret (service and gateway containers). */}}
{{- define "orbilnot.kafkaEnv" -}}
{{- if include "orbilnot.kafka.sasl" . }}
- name: KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalKafka.sasl.existingSecret }}
      key: {{ .Values.externalKafka.sasl.existingSecretPasswordKey }}
{{- end }}
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

{{/*
The initContainer that holds a service pod until the migration Job has run; it connects as the
service itself and shares the service's extraEnv/extraEnvFrom.
(dict "root" $ "service" "billing" "cfg" <the service's values>)
*/}}
{{- define "orbilnot.waitForMigrations" -}}
{{- $root := .root -}}
- name: wait-for-migrations
  image: {{ include "orbilnot.image" $root }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  command: ["orbilnot", "migrate", "--wait", "--timeout", {{ $root.Values.migrations.waitTimeoutSeconds | quote }}]
  envFrom:
    {{- include "orbilnot.serviceEnvFrom" $root | nindent 4 }}
    {{- with .cfg.extraEnvFrom }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  env:
    {{- include "orbilnot.serviceDatabaseEnv" . | nindent 4 }}
    {{- with .cfg.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  resources:
    {{- toYaml $root.Values.migrations.resources | nindent 4 }}
  securityContext:
    {{- include "orbilnot.containerSecurityContext" $root | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
{{- end -}}

{{/* Pod annotations that roll the pods when their configuration or the database password change. */}}
{{- define "orbilnot.configChecksum" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ include "orbilnot.secretChecksum" . }}
{{- end -}}

{{/*
Pod metadata of one component: (dict "root" $ "component" "billing" "cfg" <its values>
"checksums" true). The selector labels come last, so podLabels cannot break the selector.
*/}}
{{- define "orbilnot.podMetadata" -}}
labels:
  {{- with .cfg.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  {{- include "orbilnot.selectorLabels" . | nindent 2 }}
{{- if or .checksums .cfg.podAnnotations }}
annotations:
  {{- if .checksums }}
  {{- include "orbilnot.configChecksum" .root | nindent 2 }}
  {{- end }}
  {{- with .cfg.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
{{- end -}}

{{/*
Pod spec fields every workload shares: (dict "root" $ "cfg" <its values>). The ServiceAccount,
pull secrets and scheduling (node selector, tolerations, affinity, spread, priority).
*/}}
{{- define "orbilnot.podCommon" -}}
serviceAccountName: {{ include "orbilnot.serviceAccountName" .root }}
automountServiceAccountToken: false
enableServiceLinks: false
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .cfg.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .cfg.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .cfg.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .cfg.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .cfg.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}

{{/* A probe's timings: the top-level probes.<kind> with the component's own over them. */}}
{{- define "orbilnot.probeTimings" -}}
{{- $own := (.cfg.probes | default dict) -}}
{{- toYaml (mergeOverwrite (deepCopy (index .root.Values.probes .kind)) (index $own .kind | default dict)) -}}
{{- end -}}

{{/* Replicas, or autoscaling.maxReplicas when the HPA decides. */}}
{{- define "orbilnot.maxPods" -}}
{{- if .autoscaling.enabled -}}{{ .autoscaling.maxReplicas | int }}{{- else -}}{{ .replicas | int }}{{- end -}}
{{- end -}}

{{/*
The connection budget (values: databaseBudget): rendering fails when the services' pools, at
their most pods during a rollout, plus the migrations and the headroom exceed max_connections.
*/}}
{{- define "orbilnot.validateConnectionBudget" -}}
{{- $max := 0 -}}
{{- $where := "" -}}
{{- if .Values.postgresql.enabled -}}
{{- $max = .Values.postgresql.maxConnections | int -}}
{{- $where = "postgresql.maxConnections" -}}
{{- else -}}
{{- $max = .Values.externalDatabase.maxConnections | int -}}
{{- $where = "externalDatabase.maxConnections" -}}
{{- end -}}
{{- $surge := .Values.rollout.maxSurge | int -}}
{{- $headroom := .Values.databaseBudget.headroom | int -}}
{{- $total := add 1 $headroom -}}
{{- $lines := list -}}
{{- range $component := list "billing" "order" "notification" -}}
{{- $cfg := index $.Values.services $component -}}
{{- $pods := include "orbilnot.maxPods" $cfg | int -}}
{{- $pool := $cfg.dbPoolSize | int -}}
{{- $connections := mul (add $pods $surge) (add1 $pool) -}}
{{- $total = add $total $connections -}}
{{- $lines = append $lines (printf "  %-12s (%d pods + %d surge) x (dbPoolSize %d + 1 readiness) = %d" $component $pods $surge $pool $connections) -}}
{{- end -}}
{{- if gt $total $max -}}
{{- fail (printf "\n\nConnection budget exceeded: the release may open %d PostgreSQL connections, %s is %d.\n%s\n  %-12s 1\n  %-12s %d (databaseBudget.headroom)\n  total        %d > %d\nLower services.<name>.dbPoolSize or the replicas (autoscaling.maxReplicas), or raise %s." $total $where $max (join "\n" $lines) "migrations" "headroom" $headroom $total $max $where) -}}
{{- end -}}
{{- end -}}

{{/* Authentication settings, the same for the services and the gateway (README "Authentication"). */}}
{{- define "orbilnot.authConfig" -}}
AUTH_MODE: {{ ternary "oidc" "off" .Values.auth.enabled | quote }}
{{- if .Values.auth.enabled }}
OIDC_ISSUER_URL: {{ .Values.auth.issuerUrl | quote }}
OIDC_AUDIENCE: {{ .Values.auth.audience | quote }}
{{- end }}
{{- end -}}
