//! Call-chain tracing: OpenTelemetry spans exported over OTLP/HTTP, off
//! unless an endpoint is configured.
//!
//! The chain of one view: the gateway's span of the request (a child of the
//! client's W3C `traceparent` when it sends one) -> the `traceparent` header
//! on each of the request's records in `tally.views`, only when the request
//! is sampled -> the counter's span of the flush that counted them, *linked*
//! to those contexts (one flush aggregates many events of many requests, so
//! it cannot be their child) -> the same contexts as headers on the flush's
//! first counts record -> the writer's span of the batch that stored it,
//! linked to them too.
//!
//! Sampling: a request is sampled when its client's context is, else with
//! the configured ratio; a flush or batch span is sampled when any of its
//! links is (a flush that carries no sampled event makes no span at all).
//! Unsampled traffic costs a branch per request and per record: no header,
//! no span.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanKind, TraceContextExt, TraceId, TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::Context;
/// Span attributes.
pub use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SamplingDecision, SamplingResult, SdkTracer, SdkTracerProvider,
    ShouldSample,
};
use opentelemetry_sdk::Resource;
use serde::{Deserialize, Serialize};

/// The header carrying a W3C trace context, on HTTP requests and Kafka records.
pub const TRACEPARENT: &str = "traceparent";

/// Most links one flush or batch span carries; the rest are counted in an
/// attribute, not linked (a span with thousands of links is unreadable).
pub const MAX_LINKS: usize = 128;

/// How the process exports traces.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct TraceConfig {
    /// OTLP/HTTP traces endpoint (protobuf), e.g.
    /// `http://otel-collector:4318/v1/traces`; empty: no spans, no trace
    /// headers (the default).
    pub otlp_endpoint: String,
    /// Share of ingest requests traced, 0.0 to 1.0; a request whose
    /// `traceparent` says sampled is traced whatever this says.
    pub sample_ratio: f64,
    /// How often finished spans are sent.
    #[serde(with = "humantime_serde")]
    pub export_interval: Duration,
    /// Longest one export request may take (the batch is dropped after it).
    #[serde(with = "humantime_serde")]
    pub export_timeout: Duration,
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            sample_ratio: 0.01,
            export_interval: Duration::from_secs(5),
            export_timeout: Duration::from_secs(5),
        }
    }
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The ratio is not a share.
    #[error("traces.sample-ratio must be between 0 and 1, not {0}")]
    Ratio(f64),
    /// The OTLP exporter could not be built.
    #[error("cannot build the OTLP exporter for {endpoint}")]
    Exporter {
        /// The configured endpoint.
        endpoint: String,
        /// What the exporter said.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static TRACER: std::sync::OnceLock<SdkTracer> = std::sync::OnceLock::new();

/// The exporter of this process: flushes what is left when dropped.
#[must_use = "dropping it stops the export"]
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Tracing {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            ENABLED.store(false, Ordering::SeqCst);
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "the last spans were not exported");
            }
        }
    }
}

/// Starts exporting spans of `service` (e.g. `tally-ingest`) when an
/// endpoint is configured; one exporter per process (a second call exports
/// nothing more).
pub fn init(config: &TraceConfig, service: &str) -> Result<Tracing, TraceError> {
    if !(0.0..=1.0).contains(&config.sample_ratio) {
        return Err(TraceError::Ratio(config.sample_ratio));
    }
    if config.otlp_endpoint.is_empty() || TRACER.get().is_some() {
        return Ok(Tracing { provider: None });
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(&config.otlp_endpoint)
        .with_timeout(config.export_timeout)
        .build()
        .map_err(|source| TraceError::Exporter { endpoint: config.otlp_endpoint.clone(), source })?;
    let batches = BatchConfigBuilder::default().with_scheduled_delay(config.export_interval).build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter).with_batch_config(batches).build())
        .with_sampler(Sampler::ParentBased(Box::new(LinkedOrRatio::new(config.sample_ratio))))
        .with_resource(Resource::builder().with_service_name(service.to_owned()).build())
        .build();
    if TRACER.set(provider.tracer("tally")).is_err() {
        return Ok(Tracing { provider: None });
    }
    ENABLED.store(true, Ordering::SeqCst);
    tracing::info!(endpoint = %config.otlp_endpoint, ratio = config.sample_ratio, "exporting traces over OTLP");
    Ok(Tracing { provider: Some(provider) })
}

fn tracer() -> Option<&'static SdkTracer> {
    if ENABLED.load(Ordering::Relaxed) {
        TRACER.get()
    } else {
        None
    }
}

/// Samples a root span when one of its links is sampled, else by the ratio
/// of its trace id.
#[derive(Debug, Clone)]
struct LinkedOrRatio {
    ratio: Sampler,
}

impl LinkedOrRatio {
    fn new(ratio: f64) -> Self {
        Self { ratio: Sampler::TraceIdRatioBased(ratio) }
    }
}

impl ShouldSample for LinkedOrRatio {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        if links.iter().any(|link| link.span_context.is_sampled()) {
            return SamplingResult {
                decision: SamplingDecision::RecordAndSample,
                attributes: Vec::new(),
                trace_state: TraceState::default(),
            };
        }
        self.ratio.should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

/// One header value as a propagator's carrier.
struct OneHeader<'a>(&'a str);

impl Extractor for OneHeader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

/// The span context of a W3C `traceparent` value; `None` when it is not one.
pub fn parse_traceparent(value: &[u8]) -> Option<SpanContext> {
    let value = std::str::from_utf8(value).ok()?;
    let context = TraceContextPropagator::new().extract(&OneHeader(value));
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| span_context.clone())
}

/// The W3C `traceparent` value of `context`.
pub fn traceparent(context: &SpanContext) -> String {
    let mut carrier = HashMap::new();
    let cx = Context::new().with_remote_span_context(context.clone());
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT).unwrap_or_default()
}

/// The gateway's span of one sampled request; ended when dropped.
pub struct RequestSpan {
    span: opentelemetry_sdk::trace::Span,
    traceparent: String,
}

impl RequestSpan {
    /// Starts the span of a request when it is sampled: a child of the
    /// client's `traceparent` (the header's value) when it sent one.
    pub fn start(name: &'static str, client: Option<&[u8]>) -> Option<Self> {
        let tracer = tracer()?;
        let parent = client
            .and_then(parse_traceparent)
            .map_or_else(Context::new, |remote| Context::new().with_remote_span_context(remote));
        let span = tracer.span_builder(name).with_kind(SpanKind::Server).start_with_context(tracer, &parent);
        let context = span.span_context().clone();
        context.is_sampled().then(|| Self { traceparent: traceparent(&context), span })
    }

    /// The `traceparent` its records carry.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// Adds an attribute.
    pub fn set(&mut self, attribute: KeyValue) {
        self.span.set_attribute(attribute);
    }
}

/// The sampled event contexts a flush or batch aggregated, up to [`MAX_LINKS`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Links {
    contexts: Vec<SpanContext>,
    /// Contexts beyond [`MAX_LINKS`].
    pub dropped: usize,
}

impl Links {
    /// Adds the context of a `traceparent` header value; not one, ignored.
    pub fn add_traceparent(&mut self, value: &[u8]) {
        if self.contexts.len() >= MAX_LINKS {
            self.dropped += 1;
            return;
        }
        if let Some(context) = parse_traceparent(value) {
            if !self.contexts.contains(&context) {
                self.contexts.push(context);
            }
        }
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.contexts.is_empty()
    }

    /// The contexts, as `traceparent` values (for the next hop's headers).
    pub fn traceparents(&self) -> impl Iterator<Item = String> + '_ {
        self.contexts.iter().map(traceparent)
    }

    /// Starts a span linked to every context, when tracing is on and there
    /// is any; ended when dropped.
    pub fn start_span(&self, name: &'static str, attributes: Vec<KeyValue>) -> Option<opentelemetry_sdk::trace::Span> {
        let tracer = tracer()?;
        if self.contexts.is_empty() {
            return None;
        }
        let links = self.contexts.iter().map(|c| Link::with_context(c.clone())).collect();
        let mut attributes = attributes;
        if self.dropped > 0 {
            attributes.push(KeyValue::new("tally.links.dropped", i64::try_from(self.dropped).unwrap_or(i64::MAX)));
        }
        Some(
            tracer
                .span_builder(name)
                .with_kind(SpanKind::Consumer)
                .with_links(links)
                .with_attributes(attributes)
                .start_with_context(tracer, &Context::new()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const UNSAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

    #[test]
    fn a_traceparent_round_trips_and_garbage_is_no_context() {
        let context = parse_traceparent(SAMPLED.as_bytes()).expect("a valid traceparent");
        assert!(context.is_sampled());
        assert_eq!(traceparent(&context), SAMPLED);
        assert!(!parse_traceparent(UNSAMPLED.as_bytes()).unwrap().is_sampled());
        for garbage in ["", "00-xyz", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "\u{fffd}"] {
            assert_eq!(parse_traceparent(garbage.as_bytes()), None, "{garbage:?}");
        }
    }

    #[test]
    fn links_keep_distinct_contexts_up_to_the_limit_and_count_the_rest() {
        let mut links = Links::default();
        links.add_traceparent(SAMPLED.as_bytes());
        links.add_traceparent(SAMPLED.as_bytes());
        links.add_traceparent(b"not a traceparent");
        assert_eq!(links.traceparents().collect::<Vec<_>>(), vec![SAMPLED.to_owned()]);
        for i in 0..2 * MAX_LINKS {
            links.add_traceparent(format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{:016x}-01", i + 1).as_bytes());
        }
        assert_eq!(links.traceparents().count(), MAX_LINKS);
        assert_eq!(links.dropped, MAX_LINKS + 1);
    }

    #[test]
    fn a_root_span_is_sampled_when_a_link_is_whatever_the_ratio() {
        let sampler = LinkedOrRatio::new(0.0);
        let sampled = Link::with_context(parse_traceparent(SAMPLED.as_bytes()).unwrap());
        let unsampled = Link::with_context(parse_traceparent(UNSAMPLED.as_bytes()).unwrap());
        let decide = |links: &[Link]| {
            sampler.should_sample(None, TraceId::from(7), "flush", &SpanKind::Consumer, &[], links).decision
        };
        assert_eq!(decide(&[unsampled.clone(), sampled]), SamplingDecision::RecordAndSample);
        assert_eq!(decide(&[unsampled]), SamplingDecision::Drop);
        assert_eq!(decide(&[]), SamplingDecision::Drop);
    }

    #[test]
    fn without_an_endpoint_nothing_is_traced() {
        let _tracing = init(&TraceConfig::default(), "tally-test").unwrap();
        assert!(RequestSpan::start("request", Some(SAMPLED.as_bytes())).is_none());
        let mut links = Links::default();
        links.add_traceparent(SAMPLED.as_bytes());
        assert!(links.start_span("flush", Vec::new()).is_none());
        assert!(matches!(
            init(&TraceConfig { sample_ratio: 1.5, ..TraceConfig::default() }, "x"),
            Err(TraceError::Ratio(_))
        ));
    }
}
