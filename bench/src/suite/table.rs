//! The suite's Markdown table, without I/O: each system's better round of a case, its cells
//! (with what went wrong in the run marked), and the ratios between systems. With a baseline,
//! the earlier build's column and the ratio to it stand beside stompbox's.

use serde_json::Value;

use super::cases::{Better, Case, System};

// The names `stompbox-bench run --json` prints (run.rs); dots go into objects.
pub const F_READY: &str = "connections_ready";
pub const F_FAILED: &str = "connections_failed";
pub const F_DISCONNECTED: &str = "disconnected";
pub const F_CONNECT_RATE: &str = "connect_rate";
pub const F_EXPECTED: &str = "deliveries_expected";
pub const F_RECEIVED: &str = "received";
pub const F_MISSING: &str = "missing";
pub const F_RATE: &str = "deliveries_per_sec";
pub const F_P50: &str = "latency_ms.p50";
pub const F_P99: &str = "latency_ms.p99";
pub const F_P999: &str = "latency_ms.p999";
pub const F_RSS_PER_CONN: &str = "rss_per_conn_kib";
pub const F_TOOL_CPU: &str = "tool_cpu_pct";
// The names `stompbox-bench attack --json` prints (attack.rs).
pub const F_RSS_ADDED: &str = "rss_added_mib";
pub const F_BYSTANDER_P99: &str = "bystander_ms.p99";
pub const F_FRAMES_SENT: &str = "frames_sent";
pub const F_OTHER_CPU: &str = "other_cpu_pct";

/// Past this (percent of one core) a figure is marked: the tool, not the broker, may be the
/// limit.
pub const TOOL_BOUND_PCT: f64 = 90.0;
/// Past this, something else ran on the machine during the run: a noisy figure.
pub const OTHER_LOAD_PCT: f64 = 50.0;

/// One run of a case on one system: its figures, or why it has none.
#[derive(Debug, Clone)]
pub struct Run {
    pub case: String,
    pub system: System,
    pub round: usize,
    pub figures: Option<Value>,
    pub error: Option<String>,
}

/// The number at `name` (dotted for nested objects), if the run reported one.
pub fn fig(figures: &Value, name: &str) -> Option<f64> {
    let mut v = figures;
    for part in name.split('.') {
        v = v.get(part)?;
    }
    v.as_f64()
}

/// A figure that is there and not zero.
fn nonzero(figures: &Value, name: &str) -> Option<f64> {
    fig(figures, name).filter(|v| *v != 0.0)
}

/// The run with the better value of `field`; the first of equals. `None` if no run has it.
pub fn best<'a>(runs: &[Option<&'a Value>], better: Better, field: &str) -> Option<&'a Value> {
    let mut chosen: Option<(&Value, f64)> = None;
    for figures in runs.iter().flatten() {
        let Some(v) = fig(figures, field) else {
            continue;
        };
        let wins = match chosen {
            None => true,
            Some((_, c)) => match better {
                Better::Max => v > c,
                Better::Min => v < c,
            },
        };
        if wins {
            chosen = Some((figures, v));
        }
    }
    chosen.map(|(f, _)| f)
}

/// `1234567.8` as `1,234,568` with `decimals` = 0, `1,234,567.80` with 2.
pub fn grouped(v: f64, decimals: usize) -> String {
    let text = format!("{:.*}", decimals, v.abs());
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (text.as_str(), None),
    };
    let mut out = String::new();
    for (k, digit) in int.chars().enumerate() {
        if k > 0 && (int.len() - k) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    if let Some(frac) = frac {
        out.push('.');
        out.push_str(frac);
    }
    let zero = text.bytes().all(|b| b == b'0' || b == b'.');
    if v < 0.0 && !zero {
        out.insert(0, '-');
    }
    out
}

/// A figure for a cell: three significant digits or so, thousands grouped.
pub fn fmt(v: Option<f64>) -> String {
    match v {
        None => "—".into(),
        Some(v) if v.abs() >= 100.0 => grouped(v, 0),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// `a ÷ b` as `×1.23`, or `—` when either is missing or `b` is zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("×{:.2}", a / b),
        _ => "—".into(),
    }
}

/// A cell: the figure, and what went wrong in that run beside it.
pub fn cell(figures: Option<&Value>, field: &str, failed_runs: bool) -> String {
    let Some(f) = figures else {
        return if failed_runs { "failed" } else { "—" }.into();
    };
    let mut text = fmt(fig(f, field));
    let mut marks = Vec::new();
    if let (Some(expected), Some(missing)) = (nonzero(f, F_EXPECTED), nonzero(f, F_MISSING)) {
        marks.push(format!("{:.1}% not delivered", 100.0 * missing / expected));
    }
    if let Some(failed) = nonzero(f, F_FAILED) {
        marks.push(format!("{} conns failed", grouped(failed, 0)));
    }
    if let Some(dropped) = nonzero(f, F_DISCONNECTED) {
        marks.push(format!("{} dropped", grouped(dropped, 0)));
    }
    if !marks.is_empty() {
        text += &format!(" ({})", marks.join(", "));
    }
    let delivered = nonzero(f, F_EXPECTED).is_some();
    if fig(f, F_TOOL_CPU).unwrap_or(0.0) >= TOOL_BOUND_PCT && delivered {
        text += " †";
    }
    if fig(f, F_OTHER_CPU).unwrap_or(0.0) >= OTHER_LOAD_PCT && delivered {
        text += " ‡";
    }
    text
}

/// The table's rows (head included), the notes they point to, and every failed run.
pub struct Table {
    pub rows: Vec<String>,
    pub notes: Vec<String>,
    pub failures: Vec<String>,
}

/// Renders the cases that have runs, in order; `baseline` adds the columns of the earlier
/// build ("stompbox (before)" and "stompbox ÷ before").
pub fn render(runs: &[Run], cases: &[Case], baseline: bool) -> Table {
    let mut rows = if baseline {
        vec![
            "| scenario | case | figure | stompbox | stompbox (before) | RabbitMQ | null broker \
             | stompbox ÷ before | stompbox ÷ RabbitMQ | stompbox ÷ null |"
                .to_string(),
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |".to_string(),
        ]
    } else {
        vec![
            "| scenario | case | figure | stompbox | RabbitMQ | null broker | stompbox ÷ RabbitMQ \
             | stompbox ÷ null |"
                .to_string(),
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |".to_string(),
        ]
    };
    let (mut notes, mut failures) = (Vec::new(), Vec::new());
    let mut shown_group: Option<&str> = None;
    for case in cases {
        let mine: Vec<&Run> = runs.iter().filter(|r| r.case == case.key).collect();
        if mine.is_empty() {
            continue;
        }
        for run in &mine {
            if let Some(error) = &run.error {
                failures.push(format!(
                    "{} {} round {}: {error}",
                    case.key,
                    run.system.name(),
                    run.round
                ));
            }
        }
        let ran = |s: System| mine.iter().any(|r| r.system == s);
        let failed = |s: System| mine.iter().any(|r| r.system == s && r.error.is_some());
        let first = &case.figures[0];
        let chosen = |s: System| -> Option<&Value> {
            let of_system: Vec<Option<&Value>> = mine
                .iter()
                .filter(|r| r.system == s)
                .map(|r| r.figures.as_ref())
                .collect();
            best(&of_system, first.better, first.field)
        };
        let mut title = case.title.clone();
        if !case.note.is_empty() {
            notes.push(case.note.clone());
            title += &format!(" [{}]", notes.len());
        }
        let text = |s: System, field: &str| {
            if ran(s) {
                cell(chosen(s), field, failed(s))
            } else {
                "—".to_string()
            }
        };
        let val = |s: System, field: &str| chosen(s).and_then(|f| fig(f, field));
        let one_node = |title: String, label: &str, field: &str| {
            let mut line = vec![title, label.to_string(), text(System::Stompbox, field)];
            if baseline {
                line.push(text(System::StompboxBefore, field));
            }
            line.extend([text(System::Rabbit, field), text(System::Null, field)]);
            if baseline {
                let before = val(System::StompboxBefore, field);
                line.push(ratio(val(System::Stompbox, field), before));
            }
            line.extend([
                ratio(val(System::Stompbox, field), val(System::Rabbit, field)),
                ratio(val(System::Stompbox, field), val(System::Null, field)),
            ]);
            line
        };
        // Two nodes, and their ratio to one node of the same build.
        let two_nodes = |cluster: System, one: System, field: &str| {
            let r = ratio(val(cluster, field), val(one, field));
            let mut text = text(cluster, field);
            if r != "—" {
                text += &format!(" ({r} of 1 node)");
            }
            text
        };
        let mut lines = Vec::new();
        if ran(System::Cluster) {
            for f in case.figures {
                lines.push(one_node(format!("{title}: 1 node"), f.label, f.field));
            }
            for f in case.figures {
                let mut line = vec![
                    "2 nodes + Redis".to_string(),
                    f.label.to_string(),
                    two_nodes(System::Cluster, System::Stompbox, f.field),
                ];
                if baseline {
                    line.push(two_nodes(
                        System::ClusterBefore,
                        System::StompboxBefore,
                        f.field,
                    ));
                }
                line.extend(std::iter::repeat_n(String::new(), 2));
                if baseline {
                    let before = val(System::ClusterBefore, f.field);
                    line.push(ratio(val(System::Cluster, f.field), before));
                }
                line.extend(std::iter::repeat_n(String::new(), 2));
                lines.push(line);
            }
        } else {
            for f in case.figures {
                lines.push(one_node(title.clone(), f.label, f.field));
            }
        }
        // The scenario and the case once each, on their first row.
        let group = case.scenario.group();
        let mut shown_case: Option<String> = None;
        for mut line in lines {
            let this_case = line[0].clone();
            if shown_case.as_deref() == Some(this_case.as_str()) {
                line[0].clear();
            }
            shown_case = Some(this_case);
            let group_cell = if shown_group == Some(group) {
                ""
            } else {
                group
            };
            line.insert(0, group_cell.to_string());
            rows.push(format!("| {} |", line.join(" | ")));
            shown_group = Some(group);
        }
    }
    Table {
        rows,
        notes,
        failures,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::cases::{Load, Scenario, LATENCY, RATE, RATE_P99};
    use serde_json::json;
    use std::time::Duration;

    fn case(
        scenario: Scenario,
        key: &str,
        figures: &'static [super::super::cases::Figure],
    ) -> Case {
        Case {
            scenario,
            key: key.into(),
            title: format!("title of {key}"),
            systems: vec![],
            load: Load::Idle {
                n: 1,
                settle_ms: 0,
                idle_secs: 0,
            },
            figures,
            timeout: Duration::from_secs(1),
            note: String::new(),
            fresh_rabbit: false,
        }
    }

    fn run(case: &str, system: System, round: usize, figures: Option<Value>) -> Run {
        Run {
            case: case.into(),
            system,
            round,
            error: figures.is_none().then(|| "it broke".to_string()),
            figures,
        }
    }

    #[test]
    fn formats_like_the_table_always_did() {
        assert_eq!(fmt(None), "—");
        assert_eq!(fmt(Some(1234567.5)), "1,234,568");
        assert_eq!(fmt(Some(100.0)), "100");
        assert_eq!(fmt(Some(99.95)), "100.0");
        assert_eq!(fmt(Some(12.34)), "12.3");
        assert_eq!(fmt(Some(0.1234)), "0.12");
        assert_eq!(fmt(Some(-1500.0)), "-1,500");
        assert_eq!(grouped(999.0, 0), "999");
        assert_eq!(grouped(1000.0, 0), "1,000");
        assert_eq!(grouped(-0.2, 0), "0");
        assert_eq!(grouped(12345.678, 2), "12,345.68");
        assert_eq!(ratio(Some(3.0), Some(2.0)), "×1.50");
        assert_eq!(ratio(Some(3.0), Some(0.0)), "—");
        assert_eq!(ratio(None, Some(2.0)), "—");
    }

    #[test]
    fn picks_the_better_round() {
        let a = json!({"deliveries_per_sec": 10.0, "latency_ms": {"p99": 3.0}});
        let b = json!({"deliveries_per_sec": 20.0, "latency_ms": {"p99": 5.0}});
        let c = json!({"deliveries_per_sec": 20.0});
        let runs = [Some(&a), None, Some(&b), Some(&c)];
        assert!(std::ptr::eq(best(&runs, Better::Max, F_RATE).unwrap(), &b));
        assert!(std::ptr::eq(best(&runs, Better::Min, F_P99).unwrap(), &a));
        assert!(best(&runs, Better::Min, F_RSS_PER_CONN).is_none());
        assert!(best(&[None, None], Better::Max, F_RATE).is_none());
        assert_eq!(fig(&json!({"x": true}), "x"), None);
        assert_eq!(fig(&json!({"latency_ms": null}), F_P99), None);
    }

    #[test]
    fn marks_what_went_wrong_in_a_cell() {
        let f = json!({
            "deliveries_per_sec": 12345.0, "deliveries_expected": 1000, "missing": 25,
            "connections_failed": 1500, "disconnected": 2, "tool_cpu_pct": 95.0,
            "other_cpu_pct": 60.0
        });
        assert_eq!(
            cell(Some(&f), F_RATE, false),
            "12,345 (2.5% not delivered, 1,500 conns failed, 2 dropped) † ‡"
        );
        let idle = json!({"rss_per_conn_kib": 7.25, "tool_cpu_pct": 99.0});
        assert_eq!(cell(Some(&idle), F_RSS_PER_CONN, false), "7.25");
        assert_eq!(cell(None, F_RATE, true), "failed");
        assert_eq!(cell(None, F_RATE, false), "—");
    }

    #[test]
    fn renders_rows_ratios_and_notes() {
        let mut fanout = case(Scenario::Fanout, "fanout-100-burst", RATE);
        fanout.note = "a note".into();
        let steady = case(Scenario::Fanout, "fanout-100-steady", RATE_P99);
        let latency = case(Scenario::Latency, "latency-50", LATENCY);
        let rate = |r: f64| Some(json!({"deliveries_per_sec": r}));
        let runs = vec![
            run("fanout-100-burst", System::Stompbox, 1, rate(200.0)),
            run("fanout-100-burst", System::Rabbit, 1, rate(100.0)),
            run("fanout-100-burst", System::Null, 1, None),
            run("fanout-100-burst", System::Stompbox, 2, rate(400.0)),
            run("fanout-100-burst", System::Rabbit, 2, rate(50.0)),
            run(
                "fanout-100-steady",
                System::Stompbox,
                1,
                Some(json!({"deliveries_per_sec": 10.0, "latency_ms": {"p99": 2.5}})),
            ),
        ];
        let table = render(&runs, &[fanout, steady, latency], false);
        assert_eq!(
            table.rows[2..],
            [
                "| 1. fan-out | title of fanout-100-burst [1] | deliveries/s | 400 | 100 | failed | ×4.00 | — |",
                "|  | title of fanout-100-steady | p99 ms | 2.50 | — | — | — | — |",
                "|  |  | deliveries/s | 10.0 | — | — | — | — |",
            ]
        );
        assert_eq!(table.notes, ["a note"]);
        assert_eq!(table.failures, ["fanout-100-burst null round 1: it broke"]);
    }

    #[test]
    fn renders_the_cluster_beside_one_node() {
        let cluster = case(Scenario::Cluster, "cluster-max", RATE);
        let rate = |r: f64| Some(json!({"deliveries_per_sec": r}));
        let runs = vec![
            run("cluster-max", System::Cluster, 1, rate(500.0)),
            run("cluster-max", System::Stompbox, 1, rate(1000.0)),
            run("cluster-max", System::Null, 1, rate(4000.0)),
        ];
        let table = render(&runs, &[cluster], false);
        assert_eq!(
            table.rows[2..],
            [
                "| 6. cluster | title of cluster-max: 1 node | deliveries/s | 1,000 | — | 4,000 | — | ×0.25 |",
                "|  | 2 nodes + Redis | deliveries/s | 500 (×0.50 of 1 node) |  |  |  |  |",
            ]
        );
    }

    #[test]
    fn renders_the_earlier_build_beside_the_current_one() {
        let fanout = case(Scenario::Fanout, "fanout-100-burst", RATE);
        let latency = case(Scenario::Latency, "latency-50", LATENCY);
        let cluster = case(Scenario::Cluster, "cluster-max", RATE);
        let rate = |r: f64| Some(json!({"deliveries_per_sec": r}));
        let p = |p99: f64, p50: f64, p999: f64| {
            Some(json!({"latency_ms": {"p50": p50, "p99": p99, "p999": p999}}))
        };
        let runs = vec![
            run("fanout-100-burst", System::StompboxBefore, 1, rate(100.0)),
            run("fanout-100-burst", System::Stompbox, 1, rate(300.0)),
            run("fanout-100-burst", System::Null, 1, rate(600.0)),
            run("fanout-100-burst", System::StompboxBefore, 2, rate(200.0)),
            run("fanout-100-burst", System::Stompbox, 2, rate(250.0)),
            run("latency-50", System::StompboxBefore, 1, p(4.0, 1.0, 8.0)),
            run("latency-50", System::Stompbox, 1, None),
            run("latency-50", System::StompboxBefore, 2, p(3.0, 2.0, 9.0)),
            run("latency-50", System::Stompbox, 2, p(2.0, 1.0, 5.0)),
            run("cluster-max", System::ClusterBefore, 1, rate(400.0)),
            run("cluster-max", System::Cluster, 1, rate(500.0)),
            run("cluster-max", System::StompboxBefore, 1, rate(800.0)),
            run("cluster-max", System::Stompbox, 1, rate(1000.0)),
        ];
        let table = render(&runs, &[fanout, latency, cluster], true);
        assert_eq!(
            table.rows,
            [
                "| scenario | case | figure | stompbox | stompbox (before) | RabbitMQ | null broker \
                 | stompbox ÷ before | stompbox ÷ RabbitMQ | stompbox ÷ null |",
                "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
                "| 1. fan-out | title of fanout-100-burst | deliveries/s | 300 | 200 | — | 600 | ×1.50 | — | ×0.50 |",
                "| 3. steady-rate latency | title of latency-50 | p99 ms | 2.00 | 3.00 | — | — | ×0.67 | — | — |",
                "|  |  | p50 ms | 1.00 | 2.00 | — | — | ×0.50 | — | — |",
                "|  |  | p99.9 ms | 5.00 | 9.00 | — | — | ×0.56 | — | — |",
                "| 6. cluster | title of cluster-max: 1 node | deliveries/s | 1,000 | 800 | — | — | ×1.25 | — | — |",
                "|  | 2 nodes + Redis | deliveries/s | 500 (×0.50 of 1 node) | 400 (×0.50 of 1 node) |  |  | ×1.25 |  |  |",
            ]
        );
        assert_eq!(table.failures, ["latency-50 stompbox round 1: it broke"]);
    }
}
