{{/* The Deployment's own variables (the ConfigMap has the rest): the Secret's values, and the
     file names of the Secret's mounted keys. */}}
{{- define "refund-service.env" -}}
{{- $v := .Values }}
{{- $secret := include "refund-service.secretName" . }}
{{- $secretFiles := include "refund-service.secretFiles" . | trim }}
{{- if include "refund-service.postgres" . }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $v.secrets.keys.databaseUrl }}
{{- end }}
{{- if include "refund-service.migrationJob" . }}
# The hook Job migrated the schema; a pod refuses to start on a schema behind it.
- name: REFUND_SKIP_MIGRATIONS
  value: "true"
{{- end }}
{{- if $secret }}
# Optional: without it, no admin key is made on a fresh database (see NOTES).
- name: REFUND_BOOTSTRAP_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $v.secrets.keys.bootstrapApiKey }}
      optional: true
{{- range $name, $key := dict "STRIPE" "stripeWebhookSecret" "MERCADOPAGO" "mercadopagoWebhookSecret" "ADYEN" "adyenWebhookSecret" }}
{{- if index $v.providers (lower $name) "enabled" }}
# Optional: without it, POST /webhooks/{{ lower $name }} answers 404.
- name: {{ $name }}_WEBHOOK_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ index $v.secrets.keys $key }}
      optional: true
{{- end }}
{{- end }}
{{- end }}
{{- range $line := splitList "\n" $secretFiles }}
{{- if $line }}
{{- $f := splitList " " $line }}
- name: {{ index $f 2 }}
  value: {{ printf "%s/%s" (include "refund-service.secretsDir" $) (index $f 1) | quote }}
{{- end }}
{{- end }}
{{- end }}
