//! Every Grafana panel and every alert and SLO rule, evaluated by a real
//! Prometheus (Debian's, installed by `scripts/setup`) scraping a running
//! pipeline (`tally standalone` under a little traffic of every kind): each
//! query must parse, and each panel must return data but those listed in
//! [`EMPTY_IN_A_SHORT_STANDALONE_RUN`]; and `promtool check metrics` finds
//! nothing wrong with the live `/metrics` but the counter's service name.

mod common;

use std::process::Command;
use std::time::Duration;

use common::prometheus::Prometheus;
use common::TallyProcess;
use serde_json::{json, Value};
use tally_testkit::bounded;
use tally_testkit::process::free_port;

/// Panels with no data in this test, and why; their queries must still parse.
const EMPTY_IN_A_SHORT_STANDALONE_RUN: &[(&str, &str)] = &[
    ("Consumer group lag, as the broker sees it", "kafka-exporter is part of the compose stack, not of this test"),
    (
        "Batch layer behind (hours)",
        "the reconciler's gauges read 0 (no time) until a pass finds every partition archived, hours after a start",
    ),
];

struct BrokerReaper(std::path::PathBuf);

impl Drop for BrokerReaper {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.0.join("data/broker/kafka.pid")) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
    }
}

/// What `promtool check metrics` says of an exposition, one finding a line.
fn promtool_check_metrics(exposition: &str) -> Vec<String> {
    use std::io::Write as _;
    let mut child = Command::new(tally_testkit::process::find_binary("promtool", "TALLY_PROMTOOL_BIN"))
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let findings: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
    assert_eq!(output.status.success(), findings.is_empty(), "promtool's status disagrees with its output: {text}");
    findings
}

/// promtool reads the `counter` of `tally_counter_*` as the metric type in
/// the name; it is the service's name, kept so every metric of a service
/// shares its prefix.
fn is_the_counter_service_name(finding: &str) -> bool {
    finding.starts_with("tally_counter_") && finding.ends_with("metric name should not include type 'counter'")
}

fn dashboard_queries() -> Vec<(String, String)> {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/infra/grafana/dashboards/tally-pipeline.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap().replace("$__rate_interval", "20s");
            queries.push((panel["title"].as_str().unwrap_or("?").to_owned(), expr));
        }
    }
    queries
}

/// `expr:` values of the alert and SLO rules (single-line or `|` blocks).
fn alert_exprs() -> Vec<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = ["alerts.yml", "slo.yml"]
        .map(|file| std::fs::read_to_string(format!("{root}/infra/prometheus/{file}")).unwrap())
        .join("\n");
    let lines: Vec<&str> = text.lines().collect();
    let mut exprs = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if let Some(rest) = line.trim_start().strip_prefix("expr:") {
            let rest = rest.trim();
            if rest == "|" || rest == ">" || rest == "|-" || rest == ">-" {
                let indent = line.len() - line.trim_start().len();
                let mut block = Vec::new();
                i += 1;
                while i < lines.len()
                    && (lines[i].trim().is_empty() || lines[i].len() - lines[i].trim_start().len() > indent)
                {
                    block.push(lines[i].trim());
                    i += 1;
                }
                exprs.push(block.join(" "));
                continue;
            }
            exprs.push(rest.trim_matches('\'').trim_matches('"').to_owned());
        }
        i += 1;
    }
    exprs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_panel_returns_data_every_alert_parses_and_the_metrics_pass_promtool_on_a_running_pipeline() {
    bounded(Duration::from_secs(200), async {
        let dir = tempfile::tempdir().unwrap();
        let _reaper = BrokerReaper(dir.path().to_owned());
        let config = dir.path().join("tally.toml");
        std::fs::write(
            &config,
            format!(
                "[log]\nlevel = \"warn\"\n[standalone]\ndata-dir = \"{}\"\nbroker-port = {}\ncontroller-port = {}\nadmin-listen = \"127.0.0.1:0\"\n\
                 [ingest]\nlisten = \"127.0.0.1:0\"\n[query]\nlisten = \"127.0.0.1:0\"\nfresh-for = \"1s\"\n\
                 [counter]\nflush-interval = \"200ms\"\nlag-interval = \"500ms\"\n[kafka.topics]\nviews-partitions = 2\ncounts-partitions = 2\n",
                dir.path().join("data").display(),
                free_port(),
                free_port()
            ),
        )
        .unwrap();
        let tally = TallyProcess::spawn(&config, "standalone");
        let (ingest, api) = (tally.address_of("ingest"), tally.address_of("query"));

        let prometheus = Prometheus::start(dir.path(), &[("tally-standalone", &tally.admin)], &[]);

        // Traffic of every kind, for ~20 s: views, resends, late events, bad requests, queries.
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        let now = tally_model::timestamp::now_ms();
        for round in 0..40 {
            let events: Vec<Value> = (0..50)
                .map(|i| json!({"video_id": format!("v{}", i % 5), "event_id": format!("e{}", (round / 2) * 50 + i)}))
                .chain(std::iter::once(json!({"video_id": "old-phone", "event_id": format!("late{round}"), "ts": now - 3 * 3_600_000})))
                .collect();
            assert_eq!(http.post(format!("http://{ingest}/v1/events")).json(&events).send().await.unwrap().status(), 202);
            let bad = http.post(format!("http://{ingest}/v1/events")).json(&json!({"video_id": ""})).send().await.unwrap();
            assert_eq!(bad.status(), 400);
            for v in 0..5 {
                http.get(format!("http://{api}/v1/videos/v{v}/views")).send().await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }

        let mut failures = Vec::new();
        for (title, expr) in dashboard_queries() {
            let answer = prometheus.query(&http, &expr).await;
            let results = answer["data"]["result"].as_array().map_or(0, Vec::len);
            let may_be_empty = EMPTY_IN_A_SHORT_STANDALONE_RUN.iter().any(|(panel, _)| *panel == title);
            if answer["status"] != "success" || (results == 0 && !may_be_empty) {
                failures.push(format!("panel {title:?}: {expr} -> {answer}"));
            }
        }
        for (panel, why) in EMPTY_IN_A_SHORT_STANDALONE_RUN {
            assert!(
                dashboard_queries().iter().any(|(title, _)| title == panel),
                "{panel:?} may be empty ({why}) but is no panel of the dashboard"
            );
        }
        let alerts = alert_exprs();
        assert!(alerts.len() >= 8, "alert rules found: {alerts:?}");
        for expr in alerts {
            let answer = prometheus.query(&http, &expr).await;
            if answer["status"] != "success" {
                failures.push(format!("alert expr {expr} -> {answer}"));
            }
        }
        assert!(failures.is_empty(), "{} queries failed:\n{}", failures.len(), failures.join("\n"));

        let exposition =
            http.get(format!("http://{}/metrics", tally.admin)).send().await.unwrap().text().await.unwrap();
        let findings = promtool_check_metrics(&exposition);
        let unexpected: Vec<&String> = findings.iter().filter(|finding| !is_the_counter_service_name(finding)).collect();
        assert!(unexpected.is_empty(), "promtool check metrics on the live /metrics:\n{findings:#?}");
        assert!(tally.terminate(Duration::from_secs(30)).success());
    })
    .await;
}
