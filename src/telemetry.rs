//! Logging and tracing set-up. Filter with `RUST_LOG` (default: the command's own level, `info`
//! for servers, `warn` for one-shot commands).
//!
//! Spans are exported over OTLP when an endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT`);
//! the SDK itself reads `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` and
//! `OTEL_TRACES_SAMPLER(_ARG)`. Export goes through a batch span processor with a bounded
//! queue, so a slow or unreachable collector never delays a request: spans are dropped instead.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider, SpanProcessor};
use tracing::Level;
use tracing_subscriber::filter::{FilterExt as _, Targets, dynamic_filter_fn};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

#[derive(Debug, Clone, Copy)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// How spans leave the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

/// Everything [`init`] needs; [`TelemetryConfig::from_env`] reads the standard variables.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// OTLP collector: for gRPC e.g. `http://127.0.0.1:4317`; for HTTP the traces URL, e.g.
    /// `http://127.0.0.1:4318/v1/traces`. `None` disables span export.
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: OtlpProtocol,
    /// Overrides `OTEL_SERVICE_NAME`; the default is `refund-service`.
    pub service_name: Option<String>,
    /// Spans waiting for export beyond this are dropped.
    pub max_queue_size: usize,
    /// Logs through the test harness's capture instead of straight to stderr.
    pub test_writer: bool,
    /// The log filter when `RUST_LOG` is not set, e.g. `info` or `warn`.
    pub default_log_level: Level,
}

impl TelemetryConfig {
    /// Logs only, no span export.
    pub fn logs_only(log_format: LogFormat) -> Self {
        Self {
            log_format,
            otlp_endpoint: None,
            otlp_protocol: OtlpProtocol::Grpc,
            service_name: None,
            max_queue_size: 2048,
            test_writer: false,
            default_log_level: Level::INFO,
        }
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) and
    /// `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`, the default, or `http/protobuf`). As the
    /// specification says, over HTTP `/v1/traces` is appended to the general endpoint, and the
    /// traces endpoint is used as it is.
    pub fn from_env(log_format: LogFormat) -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let otlp_protocol = match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .as_deref()
        {
            Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
            _ => OtlpProtocol::Grpc,
        };
        let otlp_endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| {
            var("OTEL_EXPORTER_OTLP_ENDPOINT").map(|base| match otlp_protocol {
                OtlpProtocol::Grpc => base,
                OtlpProtocol::HttpProtobuf => {
                    format!("{}/v1/traces", base.trim_end_matches('/'))
                }
            })
        });
        Self {
            otlp_endpoint,
            otlp_protocol,
            ..Self::logs_only(log_format)
        }
    }
}

/// Keeps the span pipeline alive; [`Telemetry::shutdown`] flushes it.
#[must_use = "dropping the handle does not flush spans; call shutdown()"]
#[derive(Debug, Default)]
pub struct Telemetry {
    processor: Option<Arc<dyn SpanProcessor>>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.processor.is_some()
    }

    /// Flushes and stops span export. Never fails: a collector that does not answer is logged.
    /// Blocks while the queue is flushed, so call it outside async code (or accept a short
    /// block at process exit).
    pub fn shutdown(self) {
        let Some(processor) = self.processor else {
            return;
        };
        if let Some(state) = STATE.get() {
            let mut slot = state.slot.write().unwrap_or_else(PoisonError::into_inner);
            if slot.as_ref().is_some_and(|p| Arc::ptr_eq(p, &processor)) {
                *slot = None;
                state.exporting.store(false, Ordering::Relaxed);
            }
        }
        if let Err(e) = processor.force_flush() {
            tracing::warn!(error = %e, "could not flush spans to the collector");
        }
        if let Err(e) = processor.shutdown() {
            tracing::warn!(error = %e, "span exporter did not shut down cleanly");
        }
    }
}

/// The process's one subscriber and tracer provider. The provider's span processor is a slot
/// that each [`init`] fills with its own exporter, so that the subscriber (which can be
/// installed only once per process) need not change.
struct State {
    slot: Slot,
    exporting: Arc<AtomicBool>,
    _provider: SdkTracerProvider,
}

static STATE: OnceLock<State> = OnceLock::new();

type Slot = Arc<RwLock<Option<Arc<dyn SpanProcessor>>>>;

/// Installs the global subscriber (writing logs to stderr) the first time; later calls keep it
/// and only swap the span exporter, so tests can call it freely with their own configuration.
pub fn init(config: TelemetryConfig) -> anyhow::Result<Telemetry> {
    let state = STATE.get_or_init(|| install_subscriber(&config));
    set_propagator();
    let Some(endpoint) = config.otlp_endpoint.as_deref() else {
        return Ok(Telemetry::default());
    };
    let exporter = match config.otlp_protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()?,
        OtlpProtocol::HttpProtobuf => {
            // The batch processor exports from its own thread, outside any async runtime: the
            // blocking HTTP client belongs there. reqwest is built without a default crypto
            // provider; installing one fails harmlessly if another part of the process did.
            let _ = rustls::crypto::ring::default_provider().install_default();
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(endpoint)
                .build()?
        }
    };
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            opentelemetry_sdk::trace::BatchConfigBuilder::default()
                .with_max_queue_size(config.max_queue_size)
                .build(),
        )
        .build();
    Ok(install(state, processor, config.service_name.as_deref()))
}

/// Exports spans to `exporter` as each one ends (a simple, synchronous processor): for tests that
/// look at spans in memory, and for embedding. Installs the subscriber too, as [`init`] does.
pub fn init_with_exporter(
    config: TelemetryConfig,
    exporter: impl opentelemetry_sdk::trace::SpanExporter + 'static,
) -> Telemetry {
    let state = STATE.get_or_init(|| install_subscriber(&config));
    set_propagator();
    install(
        state,
        opentelemetry_sdk::trace::SimpleSpanProcessor::new(exporter),
        config.service_name.as_deref(),
    )
}

/// The current span's W3C trace context as headers (`traceparent`, `tracestate`), to send on to
/// the services we call. Empty when spans are not exported.
pub fn trace_headers() -> Vec<(String, String)> {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let cx = tracing::Span::current().context();
    let mut headers = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut headers));
    headers.into_iter().collect()
}

fn set_propagator() {
    opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));
}

/// Puts `processor` in the slot (shutting the previous one down) with the service's resource.
fn install(
    state: &State,
    mut processor: impl SpanProcessor + 'static,
    service_name: Option<&str>,
) -> Telemetry {
    // The SDK's builder reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
    let mut resource = Resource::builder();
    resource = match service_name {
        Some(name) => resource.with_service_name(name.to_owned()),
        None if std::env::var_os("OTEL_SERVICE_NAME").is_none() => {
            resource.with_service_name("refund-service")
        }
        None => resource,
    };
    processor.set_resource(&resource.build());
    let processor: Arc<dyn SpanProcessor> = Arc::new(processor);
    let previous = state
        .slot
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .replace(processor.clone());
    state.exporting.store(true, Ordering::Relaxed);
    if let Some(previous) = previous {
        let _ = previous.shutdown();
    }
    Telemetry {
        processor: Some(processor),
    }
}

fn install_subscriber(config: &TelemetryConfig) -> State {
    let (format, test_writer) = (config.log_format, config.test_writer);
    let slot = Arc::new(RwLock::new(None));
    let exporting = Arc::new(AtomicBool::new(false));
    // The sampler comes from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (SDK default:
    // parent-based, always on).
    let provider = SdkTracerProvider::builder()
        .with_span_processor(SlotProcessor(slot.clone()))
        .build();
    let tracer = provider.tracer("refund-service");
    let enabled = exporting.clone();
    // Spans are built for OpenTelemetry only while an exporter is installed.
    // Traces also get the debug events of provider traffic (rate-limit waits, retries) and of bulk
    // jobs (dispatch, result), as span events; logs get what RUST_LOG asks for.
    let trace_events = Targets::new()
        .with_default(Level::INFO)
        .with_target("refund_service::providers::traffic", Level::DEBUG)
        .with_target("refund_service::service::bulk_runner", Level::DEBUG);
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        // Dynamic: exporters come and go (tests install their own), so whether a callsite is
        // traced must not be decided once and cached, as a plain `filter_fn` would.
        .with_filter(
            dynamic_filter_fn(move |_, _| enabled.load(Ordering::Relaxed)).and(trace_events),
        );
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(config.default_log_level.as_str()));
    let writer = if test_writer {
        BoxMakeWriter::new(tracing_subscriber::fmt::TestWriter::new())
    } else {
        BoxMakeWriter::new(std::io::stderr)
    };
    let base = tracing_subscriber::registry().with(otel);
    // Every JSON line inside a traced span starts with its `trace_id` and `span_id`, so logs and
    // traces join up; the current span's own fields follow under "span".
    let _ = match format {
        LogFormat::Pretty => base
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_filter(filter),
            )
            .try_init(),
        LogFormat::Json => base
            .with(TraceIdLayer::default())
            .with(
                json_layer(tracing_subscriber::fmt::layer().with_writer(writer))
                    .with_filter(filter),
            )
            .try_init(),
    };
    State {
        slot,
        exporting,
        _provider: provider,
    }
}

/// The JSON log layer: one JSON object per line, with the trace and span ids first.
fn json_layer<S, W>(
    fmt: tracing_subscriber::fmt::Layer<
        S,
        tracing_subscriber::fmt::format::DefaultFields,
        tracing_subscriber::fmt::format::Format,
        W,
    >,
) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + 'static,
{
    let json = tracing_subscriber::fmt::format()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false);
    fmt.json().event_format(WithTraceIds(json))
}

/// Puts `"trace_id"` and `"span_id"` of the current span at the start of each JSON line (nothing
/// when the event is outside any traced span). The ids are those [`TraceIdLayer`] noted.
struct WithTraceIds<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let ids = ctx
            .lookup_current()
            .and_then(|span| span.extensions().get::<TraceIds>().cloned());
        let Some(TraceIds { trace_id, span_id }) = ids else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
            ),
            None => writer.write_str(&line),
        }
    }
}

/// A span's OpenTelemetry ids, kept in its extensions for the log formatter.
#[derive(Debug, Clone)]
struct TraceIds {
    trace_id: String,
    span_id: String,
}

/// Notes each new span's OpenTelemetry trace and span ids (when OpenTelemetry traces it), so log
/// lines can carry them. Must sit after the OpenTelemetry layer.
#[derive(Default)]
struct TraceIdLayer {
    dispatch: OnceLock<tracing::dispatcher::WeakDispatch>,
}

impl<S> tracing_subscriber::Layer<S> for TraceIdLayer
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        let _ = self.dispatch.set(subscriber.downgrade());
    }

    fn on_new_span(
        &self,
        _attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        use opentelemetry::trace::TraceContextExt as _;
        let Some(dispatch) = self.dispatch.get().and_then(|d| d.upgrade()) else {
            return;
        };
        let Some(cx) = tracing_opentelemetry::get_otel_context(id, &dispatch) else {
            return;
        };
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return;
        }
        let ids = TraceIds {
            trace_id: sc.trace_id().to_string(),
            span_id: sc.span_id().to_string(),
        };
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(ids);
        }
    }
}

/// Forwards to the processor in the slot, if any.
#[derive(Debug)]
struct SlotProcessor(Slot);

impl SlotProcessor {
    fn current(&self) -> Option<Arc<dyn SpanProcessor>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl SpanProcessor for SlotProcessor {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        if let Some(p) = self.current() {
            p.on_start(span, cx);
        }
    }

    fn on_end(&self, span: opentelemetry_sdk::trace::SpanData) {
        if let Some(p) = self.current() {
            p.on_end(span);
        }
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.current().map_or(Ok(()), |p| p.force_flush())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        // Each exporter is shut down by its own `Telemetry` handle.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Mutex;

    use opentelemetry::trace::TraceContextExt as _;
    use opentelemetry_sdk::trace::InMemorySpanExporter;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_start_with_the_trace_and_span_ids_of_the_current_span() {
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(InMemorySpanExporter::default())
            .build();
        let lines = Lines::default();
        let sink = lines.clone();
        let fmt = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || sink.clone());
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(TraceIdLayer::default())
            .with(json_layer(fmt));
        let ids = tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside any span");
            let span = tracing::info_span!("work", refund_id = "rf_1");
            let _entered = span.enter();
            tracing::info!(attempt = 2, "inside");
            let cx = span.context();
            let sc = cx.span().span_context().clone();
            (sc.trace_id().to_string(), sc.span_id().to_string())
        });
        let text = String::from_utf8(lines.0.lock().map(|b| b.clone()).unwrap_or_default())
            .unwrap_or_default();
        let parsed: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(parsed.len(), 2, "{text}");
        assert!(parsed[0].get("trace_id").is_none(), "{}", parsed[0]);
        assert_eq!(parsed[1]["trace_id"], ids.0.as_str());
        assert_eq!(parsed[1]["span_id"], ids.1.as_str());
        assert_eq!(parsed[1]["message"], "inside");
        assert_eq!(parsed[1]["attempt"], 2);
        assert_eq!(parsed[1]["span"]["refund_id"], "rf_1");
    }
}
