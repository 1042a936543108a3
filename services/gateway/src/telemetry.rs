//! Telemetry: one `tracing` span per RPC (a tower layer), the process's log
//! subscriber, and, when `[telemetry]` names an OTLP endpoint, OpenTelemetry
//! traces and metrics exported over OTLP/gRPC.
//!
//! Spans are named `<service>/<method>` and carry `rpc.system`,
//! `rpc.service`, `rpc.method`, `partner` (the caller, as `partner/<id>` or
//! `operator/<name>`, set by the identity layer), `rpc.grpc.status_code`,
//! and the domain fields services fill in when they know them
//! (`referral_id`, `agreement_id`, `ledger_index`, and `quota` for a quota
//! rejection). A subject is never a span field. The same layer records
//! `rpc.server.call.duration` (seconds; attributes per the RPC semantic
//! conventions) for every call, including those refused at the edge.
//!
//! Domain metrics are recorded through `crossflow_api::metrics`, which
//! [`Telemetry::start`] points at the OTLP meter.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use crossflow_settings::raw;
use crossflow_store::Database;
use http_body::{Body, Frame, SizeHint};
use opentelemetry::{
    KeyValue,
    metrics::{Histogram, MeterProvider as _},
    trace::TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{
    Resource,
    metrics::{PeriodicReader, SdkMeterProvider},
    trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider},
};
use tower::{Layer, Service};
use tracing::{Span, field::Empty};
use tracing_subscriber::{EnvFilter, layer::SubscriberExt as _, util::SubscriberInitExt as _};

/// How often the store's writer statistics are sampled for
/// `crossflow.store.commit.duration`.
const STORE_SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry.otlp_endpoint: building the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with the current span and its parents.
    Json,
}

/// The OpenTelemetry pipeline, if one is configured. Keep it for the life
/// of the process and [`Telemetry::shutdown`] it at exit to flush.
#[derive(Debug, Default)]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
}

// === impl Telemetry ===

impl Telemetry {
    /// Builds the OTLP/gRPC exporters named by `cfg` (nothing when
    /// `otlp_endpoint` is absent) and points `crossflow_api::metrics` at the
    /// meter. Call inside a Tokio runtime (tonic's channel needs one), before
    /// the server starts (the RPC layer takes its instruments then).
    pub fn start(cfg: &raw::Telemetry) -> Result<Telemetry, TelemetryError> {
        let Some(endpoint) = &cfg.otlp_endpoint else {
            return Ok(Telemetry::default());
        };
        let interval = Duration::from_millis(cfg.export_interval_ms);
        let resource = Resource::builder()
            .with_service_name(cfg.service_name.clone())
            .build();
        let spans = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()?;
        let processor = BatchSpanProcessor::builder(spans)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(interval)
                    .build(),
            )
            .build();
        let tracer = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_span_processor(processor)
            .build();
        let metrics = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()?;
        let reader = PeriodicReader::builder(metrics)
            .with_interval(interval)
            .build();
        let meter = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(reader)
            .build();
        crossflow_api::metrics::install(meter.meter(crossflow_api::metrics::SCOPE));
        tracing::info!(endpoint = %endpoint, service_name = %cfg.service_name, "exporting OpenTelemetry traces and metrics over OTLP/gRPC");
        Ok(Telemetry {
            tracer: Some(tracer),
            meter: Some(meter),
        })
    }

    /// Whether anything is exported.
    pub fn is_exporting(&self) -> bool {
        self.tracer.is_some()
    }

    /// Installs the process's `tracing` subscriber: `RUST_LOG` (or
    /// `default_level`) filtering, lines on stderr in `format`, and spans
    /// exported when this pipeline exports. Call once.
    pub fn init_logs(&self, format: LogFormat, default_level: &str) {
        let filter =
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
        let text = (format == LogFormat::Text)
            .then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
        let json = (format == LogFormat::Json).then(|| {
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .with_writer(std::io::stderr)
        });
        let otel = self.tracer.as_ref().map(|p| {
            tracing_opentelemetry::layer().with_tracer(p.tracer(crossflow_api::metrics::SCOPE))
        });
        let _ = tracing_subscriber::registry()
            .with(otel)
            .with(filter)
            .with(text)
            .with(json)
            .try_init();
    }

    /// Exports what is buffered and stops the exporters.
    pub fn shutdown(self) {
        if let Some(t) = self.tracer
            && let Err(e) = t.shutdown()
        {
            eprintln!("telemetry: flushing traces: {e}");
        }
        if let Some(m) = self.meter
            && let Err(e) = m.shutdown()
        {
            eprintln!("telemetry: flushing metrics: {e}");
        }
    }
}

/// Samples the store writer's statistics into
/// `crossflow.store.commit.duration`: each sample is the latest commit's
/// duration, taken when at least one commit happened since the last sample
/// (so at most one point per [`STORE_SAMPLE_EVERY`]; the count of commits is
/// not the histogram's count).
pub fn watch_store(db: impl Database) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen = db.stats().commits;
        let mut tick = tokio::time::interval(STORE_SAMPLE_EVERY);
        loop {
            tick.tick().await;
            let s = db.stats();
            if s.commits != seen {
                seen = s.commits;
                crossflow_api::metrics::get().store_commit(s.last_commit_micros as f64 / 1e6);
            }
        }
    })
}

/// Tower layer: a span and a duration measurement per RPC. Put it first
/// (outermost), so calls refused at the edge are measured too.
#[derive(Debug, Clone)]
pub struct RpcTelemetryLayer {
    duration: Histogram<f64>,
}

impl RpcTelemetryLayer {
    /// Takes its instrument from the current `crossflow_api::metrics` meter.
    pub fn new() -> RpcTelemetryLayer {
        let duration = crossflow_api::metrics::get()
            .meter()
            .f64_histogram("rpc.server.call.duration")
            .with_unit("s")
            .with_description("Duration of an RPC as seen by the server, until its status is sent")
            .with_boundaries(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5,
                0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
            ])
            .build();
        RpcTelemetryLayer { duration }
    }
}

impl Default for RpcTelemetryLayer {
    fn default() -> Self {
        RpcTelemetryLayer::new()
    }
}

impl<S> Layer<S> for RpcTelemetryLayer {
    type Service = RpcTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcTelemetry {
            inner,
            duration: self.duration.clone(),
        }
    }
}

/// Service produced by [`RpcTelemetryLayer`].
#[derive(Debug, Clone)]
pub struct RpcTelemetry<S> {
    inner: S,
    duration: Histogram<f64>,
}

/// What is recorded when a call ends.
#[derive(Debug)]
struct Call {
    span: Span,
    start: Instant,
    duration: Histogram<f64>,
    service: String,
    method: String,
}

impl<S, B> Service<http::Request<B>> for RpcTelemetry<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = RpcFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().trim_start_matches('/');
        let (service, method) = path.split_once('/').unwrap_or((path, ""));
        let span = tracing::info_span!(
            "rpc",
            otel.name = %path,
            otel.kind = "server",
            otel.status_code = Empty,
            "rpc.system" = "grpc",
            "rpc.service" = %service,
            "rpc.method" = %method,
            "rpc.grpc.status_code" = Empty,
            partner = Empty,
            referral_id = Empty,
            agreement_id = Empty,
            ledger_index = Empty,
            quota = Empty,
        );
        let call = Call {
            span: span.clone(),
            start: Instant::now(),
            duration: self.duration.clone(),
            service: service.to_owned(),
            method: method.to_owned(),
        };
        // Entered while the inner layers decide: the identity layer records
        // the partner on this span.
        let inner = span.in_scope(|| self.inner.call(req));
        RpcFuture {
            inner: Box::pin(inner),
            call: Some(call),
        }
    }
}

/// Future of [`RpcTelemetry`].
pub struct RpcFuture<F> {
    inner: Pin<Box<F>>,
    call: Option<Call>,
}

impl<F> std::fmt::Debug for RpcFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcFuture").finish_non_exhaustive()
    }
}

impl<F, E> std::future::Future for RpcFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let res = match &this.call {
            Some(c) => {
                let _g = c.span.enter();
                ready!(this.inner.as_mut().poll(cx))
            }
            None => ready!(this.inner.as_mut().poll(cx)),
        };
        let Some(call) = this.call.take() else {
            return Poll::Ready(res);
        };
        Poll::Ready(match res {
            Ok(resp) => {
                // A trailers-only answer (every error from a layer, most
                // handler errors) has its status in the headers.
                if let Some(code) = grpc_status(resp.headers()) {
                    call.finish(code);
                    Ok(resp)
                } else {
                    let (parts, body) = resp.into_parts();
                    let watched = Watched {
                        inner: body,
                        call: Some(call),
                    };
                    Ok(http::Response::from_parts(
                        parts,
                        tonic::body::Body::new(watched),
                    ))
                }
            }
            Err(e) => {
                call.finish(tonic::Code::Unknown as i32);
                Err(e)
            }
        })
    }
}

fn grpc_status(h: &http::HeaderMap) -> Option<i32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

// === impl Call ===

impl Call {
    fn finish(self, code: i32) {
        let secs = self.start.elapsed().as_secs_f64();
        self.span.record("rpc.grpc.status_code", code);
        let ok = code == tonic::Code::Ok as i32;
        self.span
            .record("otel.status_code", if ok { "ok" } else { "error" });
        self.duration.record(
            secs,
            &[
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", self.service),
                KeyValue::new("rpc.method", self.method),
                KeyValue::new("rpc.grpc.status_code", i64::from(code)),
            ],
        );
        self.span.in_scope(|| {
            tracing::info!(
                grpc_status = code,
                duration_us = (secs * 1e6) as u64,
                "rpc finished"
            );
        });
    }
}

/// A response body that records the call when its trailers (the status)
/// go out, or when it is dropped before (the client went away).
struct Watched {
    inner: tonic::body::Body,
    call: Option<Call>,
}

impl Body for Watched {
    type Data = <tonic::body::Body as Body>::Data;
    type Error = <tonic::body::Body as Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(code) = f.trailers_ref().and_then(grpc_status)
                    && let Some(c) = this.call.take()
                {
                    c.finish(code);
                }
            }
            Some(Err(_)) => {
                if let Some(c) = this.call.take() {
                    c.finish(tonic::Code::Internal as i32);
                }
            }
            None => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(c) = self.call.take() {
            c.finish(tonic::Code::Cancelled as i32);
        }
    }
}
