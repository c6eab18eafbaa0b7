{{/* Names and labels. */}}
{{- define "refund-service.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "refund-service.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "refund-service.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "refund-service.labels" -}}
helm.sh/chart: {{ include "refund-service.chart" . }}
{{ include "refund-service.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* What names this release's pods of any kind. */}}
{{- define "refund-service.selectorLabels" -}}
app.kubernetes.io/name: {{ include "refund-service.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The service's own pods (not the migration Job's, nor the test's): what the Deployment,
     the Services, the spread constraints, the PDB and the NetworkPolicy select. */}}
{{- define "refund-service.serverSelectorLabels" -}}
{{ include "refund-service.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "refund-service.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "refund-service.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The migration Job runs before the chart's own resources exist (pre-install): it cannot use
     a ServiceAccount the chart creates. It uses an existing one when one is named, else the
     namespace's default (with no token mounted either way). */}}
{{- define "refund-service.hookServiceAccountName" -}}
{{- if .Values.serviceAccount.create }}default{{ else }}{{ default "default" .Values.serviceAccount.name }}{{ end }}
{{- end }}

{{- define "refund-service.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* The Secret the pods read, or "" when there is none. */}}
{{- define "refund-service.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else if .Values.secrets.create }}
{{- include "refund-service.fullname" . }}
{{- end }}
{{- end }}

{{- define "refund-service.postgres" -}}
{{- if eq .Values.database.type "postgres" }}true{{ end }}
{{- end }}

{{/* Whether the hook Job migrates (then the pods start with REFUND_SKIP_MIGRATIONS=true). */}}
{{- define "refund-service.migrationJob" -}}
{{- if and (eq .Values.database.type "postgres") .Values.migrations.job.enabled }}true{{ end }}
{{- end }}

{{- define "refund-service.sqliteUrl" -}}
{{- printf "sqlite://%s/%s?mode=rwc" (trimSuffix "/" .Values.database.sqlite.dir) .Values.database.sqlite.file }}
{{- end }}

{{- define "refund-service.terminationGracePeriodSeconds" -}}
{{- $needed := add .Values.config.drainDelaySeconds .Values.config.shutdownGraceSeconds }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $needed 10 }}
{{- else }}
{{- .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* The gRPC address clients in the cluster use. */}}
{{- define "refund-service.serviceHost" -}}
{{- printf "%s.%s.svc" (include "refund-service.fullname" .) .Release.Namespace }}
{{- end }}

{{/* Where the Secret's files are mounted, and the TLS files. */}}
{{- define "refund-service.secretsDir" -}}/etc/refund-service/secrets{{- end }}
{{- define "refund-service.tlsDir" -}}/etc/refund-service/tls{{- end }}
{{- define "refund-service.clientCaDir" -}}/etc/refund-service/client-ca{{- end }}

{{/* The Secret's keys mounted as files: the credentials of enabled providers and the master
     keys of connections. Each line: "<key in the Secret> <file name> <ENV_VAR>". */}}
{{- define "refund-service.secretFiles" -}}
{{- $k := .Values.secrets.keys }}
{{- if .Values.providers.stripe.enabled }}
{{ $k.stripeSecretKey }} stripe-secret-key STRIPE_SECRET_KEY_FILE
{{- end }}
{{- if .Values.providers.mercadopago.enabled }}
{{ $k.mercadopagoAccessToken }} mercadopago-access-token MERCADOPAGO_ACCESS_TOKEN_FILE
{{- end }}
{{- if .Values.providers.adyen.enabled }}
{{ $k.adyenApiKey }} adyen-api-key ADYEN_API_KEY_FILE
{{- end }}
{{- if .Values.connections.enabled }}
{{ $k.secretsKey }} secrets-key REFUND_SECRETS_KEY_FILE
{{- if .Values.connections.rotating }}
{{ $k.previousSecretsKey }} previous-secrets-key REFUND_PREVIOUS_SECRETS_KEY_FILE
{{- end }}
{{- end }}
{{- end }}

{{/* Everything the chart refuses, each with what to change. Included by the Deployment. */}}
{{- define "refund-service.validate" -}}
{{- $v := .Values }}
{{- $sqlite := eq $v.database.type "sqlite" }}
{{- if and $sqlite (gt (int $v.replicaCount) 1) }}
{{- fail (printf "replicaCount is %d, but database.type is sqlite: a SQLite file serves one process only (an exclusive lock refuses a second pod). Use replicaCount 1, or database.type postgres for several replicas." (int $v.replicaCount)) }}
{{- end }}
{{- if and $sqlite $v.autoscaling.enabled }}
{{- fail "autoscaling.enabled is true, but database.type is sqlite: a SQLite file serves one process only (an exclusive lock refuses a second pod). Turn autoscaling off, or use database.type postgres." }}
{{- end }}
{{- $needed := add $v.config.drainDelaySeconds $v.config.shutdownGraceSeconds }}
{{- if and (not (kindIs "invalid" $v.terminationGracePeriodSeconds)) (le (int $v.terminationGracePeriodSeconds) (int $needed)) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be greater than config.drainDelaySeconds + config.shutdownGraceSeconds (%d): the kubelet would kill the pod before it has drained. Raise it, or leave it null to have it computed (%d)." (int $v.terminationGracePeriodSeconds) (int $needed) (int (add $needed 10))) }}
{{- end }}
{{- if and $v.secrets.create $v.secrets.existingSecret }}
{{- fail "secrets.create and secrets.existingSecret are both set: choose one (existingSecret for anything but development)." }}
{{- end }}
{{- $secret := include "refund-service.secretName" . }}
{{- if and (not $sqlite) (not $secret) }}
{{- fail "database.type is postgres, whose URL comes from a Secret: set secrets.existingSecret (with the key secrets.keys.databaseUrl), or for development secrets.create with secrets.values.databaseUrl." }}
{{- end }}
{{- if and (not $sqlite) $v.secrets.create (not $v.secrets.values.databaseUrl) }}
{{- fail "database.type is postgres and secrets.create is true, but secrets.values.databaseUrl is empty." }}
{{- end }}
{{- range $name := list "stripe" "mercadopago" "adyen" }}
{{- if and (index $v.providers $name "enabled") (not $secret) }}
{{- fail (printf "providers.%s.enabled needs its credential from a Secret: set secrets.existingSecret (or secrets.create)." $name) }}
{{- end }}
{{- end }}
{{- if and $v.connections.enabled (not $secret) }}
{{- fail "connections.enabled needs the master key from a Secret (secrets.keys.secretsKey): set secrets.existingSecret (or secrets.create)." }}
{{- end }}
{{- if and $v.connections.rotating (not $v.connections.enabled) }}
{{- fail "connections.rotating needs connections.enabled." }}
{{- end }}
{{- if $v.secrets.create }}
{{- $vals := $v.secrets.values }}
{{- if and $v.providers.stripe.enabled (not $vals.stripeSecretKey) }}{{ fail "providers.stripe.enabled with secrets.create needs secrets.values.stripeSecretKey." }}{{ end }}
{{- if and $v.providers.mercadopago.enabled (not $vals.mercadopagoAccessToken) }}{{ fail "providers.mercadopago.enabled with secrets.create needs secrets.values.mercadopagoAccessToken." }}{{ end }}
{{- if and $v.providers.adyen.enabled (not $vals.adyenApiKey) }}{{ fail "providers.adyen.enabled with secrets.create needs secrets.values.adyenApiKey." }}{{ end }}
{{- if and $v.connections.enabled (not $vals.secretsKey) }}{{ fail "connections.enabled with secrets.create needs secrets.values.secretsKey." }}{{ end }}
{{- if and $v.connections.rotating (not $vals.previousSecretsKey) }}{{ fail "connections.rotating with secrets.create needs secrets.values.previousSecretsKey." }}{{ end }}
{{- if and $vals.bootstrapApiKey (lt (len (trim $vals.bootstrapApiKey)) 32) }}{{ fail "secrets.values.bootstrapApiKey must be at least 32 characters (the service refuses a shorter one)." }}{{ end }}
{{- end }}
{{- if and $v.providers.adyen.enabled (not $v.providers.adyen.merchantAccount) }}
{{- fail "providers.adyen.enabled needs providers.adyen.merchantAccount (the service refuses to start without it)." }}
{{- end }}
{{- if and $v.tls.enabled (not $v.tls.secretName) }}
{{- fail "tls.enabled needs tls.secretName: the Secret with the certificate (tls.certKey) and key (tls.keyKey)." }}
{{- end }}
{{- if and $v.tls.clientCA.enabled (not $v.tls.enabled) }}
{{- fail "tls.clientCA.enabled (mTLS) needs tls.enabled." }}
{{- end }}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- fail (printf "autoscaling.minReplicas (%d) is above autoscaling.maxReplicas (%d)." (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- end }}
{{- if $v.podDisruptionBudget.enabled }}
{{- $min := $v.podDisruptionBudget.minAvailable }}
{{- $max := $v.podDisruptionBudget.maxUnavailable }}
{{- if and (kindIs "invalid" $min) (kindIs "invalid" $max) }}
{{- fail "podDisruptionBudget.enabled needs minAvailable or maxUnavailable." }}
{{- end }}
{{- if and (not (kindIs "invalid" $min)) (not (kindIs "string" $min)) (not $v.autoscaling.enabled) (ge (int $min) (int $v.replicaCount)) }}
{{- fail (printf "podDisruptionBudget.minAvailable (%d) is not below replicaCount (%d): no pod could ever be evicted, and node drains would hang." (int $min) (int $v.replicaCount)) }}
{{- end }}
{{- end }}
{{- if and $v.networkPolicy.enabled (not $sqlite) (not $v.networkPolicy.egress.postgres.cidrs) (not $v.networkPolicy.egress.postgres.peers) }}
{{- fail "networkPolicy.enabled with database.type postgres needs networkPolicy.egress.postgres.cidrs or .peers: the pods could not reach the database." }}
{{- end }}
{{- $managed := list "REFUND_GRPC_ADDR" "REFUND_HTTP_ADDR" "DATABASE_URL" "REFUND_DB_MAX_CONNECTIONS" "REFUND_SKIP_MIGRATIONS" "REFUND_LOG_FORMAT" "RUST_LOG" "REFUND_DRAIN_DELAY" "REFUND_SHUTDOWN_GRACE" "REFUND_API_KEY_RATE_LIMIT" "REFUND_CORS_ALLOWED_ORIGINS" "REFUND_BOOTSTRAP_API_KEY" "REFUND_TLS_CERT" "REFUND_TLS_KEY" "REFUND_TLS_CLIENT_CA" "REFUND_SECRETS_KEY_FILE" "REFUND_PREVIOUS_SECRETS_KEY_FILE" "REFUND_PLATFORM_ACCOUNTS" "STRIPE_SECRET_KEY" "STRIPE_SECRET_KEY_FILE" "STRIPE_WEBHOOK_SECRET" "STRIPE_API_BASE" "REFUND_STRIPE_RATE_LIMIT" "MERCADOPAGO_ACCESS_TOKEN" "MERCADOPAGO_ACCESS_TOKEN_FILE" "MERCADOPAGO_WEBHOOK_SECRET" "MERCADOPAGO_API_BASE" "REFUND_MERCADOPAGO_RATE_LIMIT" "ADYEN_API_KEY" "ADYEN_API_KEY_FILE" "ADYEN_WEBHOOK_SECRET" "ADYEN_API_BASE" "REFUND_ADYEN_RATE_LIMIT" "ADYEN_MERCHANT_ACCOUNT" "OTEL_EXPORTER_OTLP_ENDPOINT" "OTEL_EXPORTER_OTLP_PROTOCOL" "OTEL_SERVICE_NAME" "OTEL_RESOURCE_ATTRIBUTES" "OTEL_TRACES_SAMPLER" "OTEL_TRACES_SAMPLER_ARG" }}
{{- range $key, $_ := $v.config.extraEnv }}
{{- if has $key $managed }}
{{- fail (printf "config.extraEnv.%s is set by the chart itself: use the chart's value for it (see README.md)." $key) }}
{{- end }}
{{- end }}
{{- end }}
