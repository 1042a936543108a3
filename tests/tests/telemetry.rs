//! Telemetry end to end: the real `crossflow serve` exports its spans and
//! metrics over OTLP/gRPC to a small collector running in this test, and
//! logs each RPC (text by default, JSON with `--log-format json`) with its
//! span fields and never a subject.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crossflow_proto::v1::{
    GetReferredUserTagsRequest, PublishTagsRequest, ReportConversionRequest, Tag,
    conversion_service_client::ConversionServiceClient,
    referral_service_client::ReferralServiceClient, tag_service_client::TagServiceClient,
};
use crossflow_tests::{
    ALPHA, BETA, DEADLINE, FEDERATION, TestGateway, assert_refused, channel_as, create_req,
    crossflow_bin, default_body, gateway_section, redeem_req,
};
use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    },
    common::v1::{AnyValue, any_value::Value},
    trace::v1::Span,
};
use tonic::{Code, Request, Response, Status};

/// What the collector received.
#[derive(Debug, Default, Clone)]
struct Received {
    spans: Arc<Mutex<Vec<Span>>>,
    metrics: Arc<Mutex<BTreeSet<String>>>,
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for Received {
    async fn export(
        &self,
        req: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let mut names = self.metrics.lock().unwrap();
        for rm in req.into_inner().resource_metrics {
            for sm in rm.scope_metrics {
                names.extend(sm.metrics.into_iter().map(|m| m.name));
            }
        }
        Ok(Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

/// Serves an OTLP/gRPC collector on 127.0.0.1:0.
async fn collector() -> (SocketAddr, Received) {
    let received = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(received.clone()))
        .add_service(MetricsServiceServer::new(received.clone()));
    tokio::spawn(async move {
        router
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (addr, received)
}

fn attr(span: &Span, key: &str) -> Option<String> {
    let v = span.attributes.iter().find(|kv| kv.key == key)?;
    match v
        .value
        .as_ref()
        .and_then(|AnyValue { value }| value.as_ref())?
    {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// The default federation with alpha's referrals capped per day, and alpha's
/// `life-stage` tags readable by beta.
fn quota_body(daily_cap: u32) -> String {
    let tags = "\n[tags]\n[[tags.namespaces]]\nname = \"life-stage\"\nvalues = [\"newborn\"]\n";
    let body = default_body().replacen(
        "from = \"alpha\"\nto = \"beta\"\n",
        "from = \"alpha\"\nto = \"beta\"\ntag_scopes = [\"life-stage\"]\n",
        1,
    ) + tags;
    body.replacen(
        "enabled = true\n",
        &format!(
            "enabled = true\n[partners.quotas.referrals]\nrate_per_sec = 1000\nburst = 1000\ndaily_cap = {daily_cap}\n"
        ),
        1,
    )
}

#[tokio::test]
async fn spans_and_metrics_arrive_over_otlp() {
    let (otlp, received) = collector().await;
    let telemetry =
        format!("\n[telemetry]\notlp_endpoint = \"http://{otlp}\"\nexport_interval_ms = 200\n");
    let mut gw = TestGateway::builder()
        .body(format!("{}{telemetry}", quota_body(2)))
        .spawn(&[])
        .await;

    let mut alpha = gw.referrals(ALPHA).await;
    let made = alpha
        .create_referral(create_req("secret-subject-1", BETA, "room-1"))
        .await
        .unwrap()
        .into_inner();
    let referral = made.referral.unwrap();
    gw.referrals(BETA)
        .await
        .redeem_referral(redeem_req(&made.token, "secret-subject-2"))
        .await
        .unwrap();
    alpha
        .create_referral(create_req("secret-subject-1", BETA, "room-2"))
        .await
        .unwrap();
    let over = alpha
        .create_referral(create_req("secret-subject-1", BETA, "room-3"))
        .await;
    assert_refused(over, Code::ResourceExhausted, "DAILY_CAP_REACHED");
    // alpha knows the viewer; beta, which received it, reads the tags.
    TagServiceClient::new(gw.channel(ALPHA).await)
        .publish_tags(PublishTagsRequest {
            subject: "secret-subject-1".into(),
            tags: vec![Tag {
                namespace: "life-stage".into(),
                value: "newborn".into(),
                ttl: None,
            }],
            request_id: String::new(),
        })
        .await
        .unwrap();
    let read = TagServiceClient::new(gw.channel(BETA).await)
        .get_referred_user_tags(GetReferredUserTagsRequest {
            referral_id: referral.referral_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.tags.len(), 1);
    // The referred viewer buys at beta: a conversion (and a ledger entry).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    ConversionServiceClient::new(gw.channel(BETA).await)
        .report_conversion(ReportConversionRequest {
            order_id: "otlp-order-1".into(),
            subject: "secret-subject-2".into(),
            amount_minor: 10_000,
            currency: "CNY".into(),
            category: "toys".into(),
            // After the landing (attributed: commission at 500 bps).
            occurred_at: Some(prost_types::Timestamp {
                seconds: now.as_secs() as i64,
                nanos: now.subsec_nanos() as i32,
            }),
            referral_id: String::new(),
        })
        .await
        .unwrap();
    // A reload: raise the cap.
    std::fs::write(
        gw.bed().config_path(),
        format!(
            "{}\n{}{telemetry}",
            gateway_section(FEDERATION, "127.0.0.1:0"),
            quota_body(3)
        ),
    )
    .unwrap();

    let want_metrics = [
        "rpc.server.call.duration",
        "crossflow.referrals.minted",
        "crossflow.referrals.redeemed",
        "crossflow.quota.rejections",
        "crossflow.quota.near_limit",
        "crossflow.config.reloads",
        "crossflow.store.commit.duration",
        // The integrator signs the empty log's checkpoint at start.
        "crossflow.ledger.size",
        "crossflow.ledger.checkpoint.age",
        "crossflow.conversions",
        "crossflow.conversions.commission",
        "crossflow.tags.disclosed",
    ];
    let start = Instant::now();
    loop {
        let names = received.metrics.lock().unwrap().clone();
        let spans = received.spans.lock().unwrap().clone();
        let minted = spans.iter().find(|s| {
            s.name == "crossflow.v1.ReferralService/CreateReferral"
                && attr(s, "rpc.grpc.status_code").as_deref() == Some("0")
        });
        let refused = spans.iter().any(|s| {
            s.name == "crossflow.v1.ReferralService/CreateReferral"
                && attr(s, "rpc.grpc.status_code").as_deref() == Some("8")
                && attr(s, "quota").as_deref() == Some("partner:alpha/referrals/daily_cap")
        });
        if want_metrics.iter().all(|m| names.contains(*m))
            && let Some(span) = minted
            && refused
        {
            assert_eq!(attr(span, "rpc.system").as_deref(), Some("grpc"));
            assert_eq!(
                attr(span, "rpc.service").as_deref(),
                Some("crossflow.v1.ReferralService")
            );
            assert_eq!(attr(span, "rpc.method").as_deref(), Some("CreateReferral"));
            assert_eq!(attr(span, "partner").as_deref(), Some("partner/alpha"));
            assert_eq!(attr(span, "agreement_id").as_deref(), Some("alpha-beta"));
            assert!(attr(span, "referral_id").is_some(), "{span:?}");
            // No subject anywhere in any exported span.
            for s in &spans {
                assert!(
                    !format!("{s:?}").contains("secret-subject"),
                    "a subject leaked into {s:?}"
                );
            }
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "missing after {DEADLINE:?}: metrics {names:?} (want {want_metrics:?}); spans {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!referral.referral_id.is_empty());

    // The text log shows the span fields of each RPC, and no subject.
    let log = gw.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("rpc finished") && l.contains("CreateReferral"))
        .unwrap_or_else(|| panic!("no rpc line in:\n{log}"));
    assert!(line.contains("partner/alpha"), "{line}");
    assert!(line.contains("grpc_status=0"), "{line}");
    assert!(
        !log.contains("secret-subject"),
        "a subject leaked into the log"
    );
    gw.stop().await;
}

async fn next_line(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .ok()
        .flatten()
        .expect("the gateway's log ended or stalled")
}

#[tokio::test]
async fn json_logs_carry_the_rpc_span() {
    let bed = TestGateway::builder().body(default_body()).layout();
    let mut child = Command::new(crossflow_bin())
        .args(["--log-format", "json", "serve", "--config"])
        .arg(bed.config_path())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let addr: SocketAddr = loop {
        let line = next_line(&mut rx).await;
        if line.contains("crossflow gateway serving") {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            break v["fields"]["addr"].as_str().unwrap().parse().unwrap();
        }
    };
    let ch = channel_as(&bed, addr, ALPHA).await;
    ReferralServiceClient::new(ch)
        .create_referral(create_req("secret-subject-3", BETA, "room"))
        .await
        .unwrap();
    let rpc: serde_json::Value = loop {
        let line = next_line(&mut rx).await;
        assert!(
            !line.contains("secret-subject"),
            "subject in the log: {line}"
        );
        if line.contains("rpc finished") {
            break serde_json::from_str(&line).unwrap();
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(rpc["fields"]["grpc_status"], 0, "{rpc}");
    let span = &rpc["span"];
    assert_eq!(span["name"], "rpc", "{rpc}");
    assert_eq!(span["rpc.method"], "CreateReferral", "{rpc}");
    assert_eq!(span["partner"], "partner/alpha", "{rpc}");
    assert_eq!(span["agreement_id"], "alpha-beta", "{rpc}");
}
