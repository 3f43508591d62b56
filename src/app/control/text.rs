//! The lines `rewire status` prints, made from the typed [`Report`]: a field renamed in
//! `status.rs` breaks the build here instead of blanking a line of the output.

use std::fmt::Write as _;
use std::time::SystemTime;

use crate::status::{JobStatus, Report, TemplateState};

/// The human-readable form of a status report.
pub fn status(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "rewire (pid {})  config {}", r.pid, r.config);
    if r.catalog_health.is_empty() {
        let _ = writeln!(out, "catalog: {}", r.catalog);
    } else {
        let _ = writeln!(out, "catalog: {} ({})", r.catalog, r.catalog_health);
    }
    let _ = writeln!(
        out,
        "maintenance: {}",
        if r.maintenance { "on" } else { "off" }
    );
    if let Some(rejected) = &r.rejected_reload {
        let _ = writeln!(out, "last reload: rejected {rejected}");
    }

    match &r.main {
        Some(m) => {
            let mut line = format!("main: {}", m.state);
            if let Some(pid) = m.pid {
                line.push_str(&format!(" (pid {pid})"));
            }
            if m.restarts > 0 {
                line.push_str(&format!(", {} restart(s)", m.restarts));
            }
            if let Some(last) = m.last_exit.as_deref().filter(|l| !l.is_empty()) {
                line.push_str(&format!(", last: {last}"));
            }
            let _ = writeln!(out, "{line}");
        }
        None => {
            let _ = writeln!(out, "main: none");
        }
    }

    let services = r
        .services
        .values()
        .map(|s| {
            let mut line = format!(
                "{} ({})  {}:{}  {}{}",
                s.id,
                s.name,
                s.address,
                s.port,
                s.status,
                if s.registered {
                    ", registered"
                } else {
                    ", not registered"
                }
            );
            let detail = one_line(&s.detail);
            if !detail.is_empty() {
                line.push_str(&format!("  {detail}"));
            }
            line
        })
        .collect();
    section(&mut out, "services", services);
    section(&mut out, "watches", r.watches.clone());

    let templates = r
        .templates
        .iter()
        .map(|(name, t)| {
            let mut line = format!("{name} -> {}  {}", t.destination, state(&t.state));
            line.push_str(&format!(
                ", last render {}",
                t.last_render.map_or_else(|| "never".to_string(), time)
            ));
            if let Some(written) = t.last_written {
                line.push_str(&format!(", last written {}", time(written)));
            }
            if !t.last_path.is_empty() {
                line.push_str(&format!("\n    last change by {}", one_line(&t.last_path)));
            }
            if !t.leaving.is_empty() {
                line.push_str(&format!(
                    "\n    leaving (deleted once their connections end): {}",
                    t.leaving.join(", ")
                ));
            }
            let detail = one_line(&t.detail);
            if !detail.is_empty() {
                let what = if t.state == TemplateState::Error {
                    "last error"
                } else {
                    "waiting"
                };
                line.push_str(&format!("\n    {what}: {detail}"));
            }
            line
        })
        .collect();
    section(&mut out, "templates", templates);

    let tasks = r
        .tasks
        .iter()
        .map(|(name, t)| {
            let mut line = format!("{name}: {} run(s), {} failed", t.runs, t.failures);
            let e = one_line(&t.last_error);
            if !e.is_empty() {
                line.push_str(&format!("; last error: {e}"));
            }
            line
        })
        .collect();
    section(&mut out, "tasks", tasks);

    let elections = r
        .elections
        .iter()
        .map(|(name, e)| {
            let mut line = format!("{name}: {}", e.role);
            if !e.holder.is_empty() {
                line.push_str(&format!(", holder {}", e.holder));
            }
            if let Some(token) = e.token {
                line.push_str(&format!(", token {token}"));
            }
            if let Some(since) = e.since {
                line.push_str(&format!(", since {}", time(since)));
            }
            let detail = one_line(&e.detail);
            if !detail.is_empty() {
                line.push_str(&format!("; {detail}"));
            }
            line
        })
        .collect();
    section(&mut out, "elections", elections);
    // Only when there are jobs besides main (main has its own line above).
    if r.jobs.keys().any(|n| n != crate::config::MAIN_JOB) {
        let jobs = r.jobs.iter().map(|(name, j)| job_line(name, j)).collect();
        section(&mut out, "jobs", jobs);
    }
    out
}

/// `consul-agent: running (pid 12), healthy, 1 restart(s), last exit: ..., waits for: ...`
fn job_line(name: &str, j: &JobStatus) -> String {
    let mut line = format!("{name}: {}", one_line(&j.state));
    if let Some(pid) = j.pid {
        line.push_str(&format!(" (pid {pid})"));
    }
    match j.healthy {
        Some(true) => line.push_str(", healthy"),
        Some(false) => line.push_str(&format!(", unhealthy: {}", one_line(&j.health_note))),
        None => {}
    }
    if j.restarts > 0 {
        line.push_str(&format!(", {} restart(s)", j.restarts));
    }
    if let Some(last) = j.last_exit.as_deref().filter(|l| !l.is_empty()) {
        line.push_str(&format!(", last exit: {last}"));
    }
    if let Some(w) = &j.waits_for {
        line.push_str(&format!(", waits for: {w}"));
    }
    line
}

fn section(out: &mut String, title: &str, items: Vec<String>) {
    let _ = writeln!(out, "{title}:");
    if items.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for i in items {
        let _ = writeln!(out, "  {i}");
    }
}

fn state(s: &TemplateState) -> &'static str {
    match s {
        TemplateState::Pending => "pending",
        TemplateState::Ok => "ok",
        TemplateState::Error => "error",
    }
}

/// As the report's JSON shows it.
fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The first line of a multi-line detail, marked as cut.
fn one_line(s: &str) -> String {
    let s = s.trim();
    match s.split_once('\n') {
        Some((first, _)) => format!("{first} ..."),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::status::{MainStatus, ServiceStatus, TaskStatus, TemplateStatus};

    #[test]
    fn status_text_lists_every_section() {
        let mut report = Report {
            pid: 7,
            config: "/etc/rewire.toml".into(),
            catalog: "dir:/cat".into(),
            watches: vec!["sales: 2 healthy; on_change ran 1 time(s), 0 failed".into()],
            main: Some(MainStatus {
                state: "running".into(),
                pid: Some(42),
                restarts: 0,
                last_exit: None,
                last_exit_code: None,
            }),
            ..Report::default()
        };
        report.templates.insert(
            "nginx".into(),
            TemplateStatus {
                destination: "/etc/nginx.conf".into(),
                state: TemplateState::Error,
                detail: "check rejected\nmore".into(),
                last_render: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_200)),
                last_written: None,
                renders: 1,
                writes: 0,
                ready: false,
                last_path: "runtime: +be_web/web-2 10.0.0.2:80".into(),
                leaving: vec!["be_web/web-1".into()],
            },
        );
        report.services.insert(
            "web-h-80".into(),
            ServiceStatus {
                id: "web-h-80".into(),
                name: "web".into(),
                address: "10.0.0.1".into(),
                port: 80,
                status: "passing".into(),
                registered: true,
                detail: "ok".into(),
            },
        );
        report.tasks.insert(
            "backup".into(),
            TaskStatus {
                runs: 3,
                failures: 1,
                last_error: "exited with status 1".into(),
            },
        );
        report.elections.insert(
            "primary".into(),
            crate::status::ElectionStatus {
                role: "leader".into(),
                holder: "redis-a (10.0.0.5:6379)".into(),
                token: Some(7),
                since: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_200)),
                detail: String::new(),
                terms: 1,
            },
        );
        let t = status(&report);
        assert!(
            t.contains(
                "primary: leader, holder redis-a (10.0.0.5:6379), token 7, since 2024-01-01"
            ),
            "{t}"
        );
        assert!(t.contains("main: running (pid 42)"), "{t}");
        assert!(!t.contains("jobs:"), "no jobs section without jobs:\n{t}");
        assert!(
            t.contains("web-h-80 (web)  10.0.0.1:80  passing, registered  ok"),
            "{t}"
        );
        assert!(t.contains("sales: 2 healthy"), "{t}");
        assert!(
            t.contains("nginx -> /etc/nginx.conf  error, last render 2024-01-01"),
            "{t}"
        );
        assert!(t.contains("last error: check rejected ..."), "{t}");
        assert!(
            t.contains("backup: 3 run(s), 1 failed; last error: exited with status 1"),
            "{t}"
        );
        assert!(t.starts_with("rewire (pid 7)  config /etc/rewire.toml\ncatalog: dir:/cat\n"));
    }

    #[test]
    fn every_job_shows_state_pid_health_restarts_last_exit_and_what_it_waits_for() {
        let mut report = Report::default();
        report.jobs.insert(
            "consul-agent".into(),
            JobStatus {
                state: "running".into(),
                pid: Some(7),
                restarts: 2,
                last_exit: Some("exited with status 1".into()),
                healthy: Some(true),
                ..JobStatus::default()
            },
        );
        report.jobs.insert(
            "main".into(),
            JobStatus {
                state: "waiting".into(),
                waits_for: Some("consul-agent healthy (timeout 1m)".into()),
                ..JobStatus::default()
            },
        );
        let t = status(&report);
        assert!(
            t.contains("jobs:\n  consul-agent: running (pid 7), healthy, 2 restart(s), last exit: exited with status 1\n  main: waiting, waits for: consul-agent healthy (timeout 1m)\n"),
            "{t}"
        );
    }
}
