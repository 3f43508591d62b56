//! ContainerPilot: v2 JSON (`consul`, `preStart`, `services`, `backends`, `tasks`, ...) and
//! v3 JSON5 (`consul`, `jobs`, `watches`, `control`, `telemetry`).
//!
//! A ContainerPilot config is a Go template over the environment, rendered before it is
//! parsed. `{{ .VAR }}` and `{{ .VAR | default "x" }}` become rewire's `${VAR}` and
//! `${VAR:-x}`; a placeholder outside a JSON string (`"port": {{ .PORT }}`) makes the file
//! invalid JSON, so it is read as the string `"${PORT}"`, which rewire accepts for numbers.
//! Any other template logic is reported with its line and column.
//!
//! v3's jobs are sorted by what they do: `when.interval` is a `[[task]]`, a job run on a
//! watch's `changed` is a `[[watch]]` (or a `[[template]]` when it runs
//! `consul-template -once`), `stopping`/`stopped` hooks of the app are `pre_stop`/`post_stop`,
//! a job the app waits for with `exitSuccess` is `pre_start` (a `[[job]]` that [main] waits
//! for when it waits for an event itself), and the long-running app is
//! `[main]` (its `when` on another job's event becomes `[main] when`). Everything else is a
//! `[[job]]`: a co-process beside the app (a Consul agent), or a job started by another job's
//! event (`when {source, once|each}` becomes `when`/`each`, `restarts` `restart`/
//! `restart_limit`, `health` the job's `health`/`interval`/`timeout`, and a job's `port` a
//! `[[service]]` with `job = NAME` reporting that health).

mod commands;
mod consul;
mod placeholders;
mod v2;
mod v3;
mod watches;

use super::argv;
use super::consul_template::{self, Cli};
use super::gotmpl::{self, Piece};
use super::plan::{
    Catalog, Command, Finding, Job as PlanJob, Location, Metric, Plan, Reload, Run, Service, Task,
    Template, Wait, Watch, When as PlanWhen,
};
use super::templates::{Source, Templates};
use super::tree::{self, Node, Value};
use super::walk::{Ctx, Obj};
use commands::{command, consul_template_call, hook};
use consul::{consul, consul_options, interfaces, port};
use placeholders::{expand, replace_placeholders};
use v2::v2;
use v3::v3;
use watches::{on_change, watched};

/// A file ContainerPilot could render but this import cannot read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub line: usize,
    pub col: usize,
    pub what: String,
}

pub fn import(ctx: &mut Ctx, templates: &mut Templates, plan: &mut Plan) -> Result<(), Unreadable> {
    let (json, vars) = replace_placeholders(ctx)?;
    let mut root = tree::read_json5(&json).map_err(|e| Unreadable {
        line: e.line,
        col: e.col,
        what: format!("not valid JSON5: {}", e.what),
    })?;
    expand(ctx, &mut root, &vars, "");
    let Some(top) = Obj::new(&root, "") else {
        return Err(Unreadable {
            line: 1,
            col: 1,
            what: "expected a JSON object at the top".into(),
        });
    };
    plan.main.origin = format!("from {}", ctx.file.display());
    consul(ctx, &top, plan);
    if let Some(n) = top.get("logging") {
        ctx.note(
            n,
            "logging",
            "rewire logs to stderr; use `rewire --log-level LEVEL --log-format text|json`",
        );
    }
    if let Some(t) = ctx.duration(&top, "stopTimeout") {
        plan.main.stop_timeout = Some(t);
    }
    if let Some(t) = top.get("telemetry").and_then(|n| Obj::new(n, "telemetry")) {
        telemetry(ctx, &t, plan);
    }
    if let Some(s) = top.get("control").and_then(|n| Obj::new(n, "control")) {
        if let Some(sock) = ctx.string(&s, "socket") {
            ctx.note(
                top.get("control").unwrap_or(&root),
                "control.socket",
                "now rewire's control socket (`rewire status`, `rewire maintenance on|off`); ContainerPilot's HTTP API calls (putenv, putmetric, reload) have no equivalent",
            );
            plan.control_socket = Some(sock);
        }
        ctx.rest(&s, "not a control setting rewire knows");
    }
    if top.has("jobs") {
        v3(ctx, &top, templates, plan);
    } else {
        v2(ctx, &top, templates, plan);
    }
    ctx.rest(&top, "not a ContainerPilot setting rewire knows");
    Ok(())
}

/// `telemetry`: the port becomes `[telemetry] listen`, counters and gauges `[[metric]]`s.
fn telemetry(ctx: &mut Ctx, t: &Obj, plan: &mut Plan) {
    if let Some(n) = t.get("port") {
        match ctx.string(t, "port").and_then(|p| p.parse::<u16>().ok()) {
            Some(port) if port > 0 => {
                plan.telemetry_listen = Some(format!("0.0.0.0:{port}"));
                ctx.note(
                    n,
                    "telemetry.port",
                    "rewire serves /metrics, /health and /ready there on every interface; it does not register a `containerpilot` service in the catalog",
                );
            }
            _ => ctx.unmapped(n, "telemetry.port", "expected a port number"),
        }
    }
    if let Some(n) = t.get("interfaces") {
        ctx.note(
            n,
            "telemetry.interfaces",
            "rewire listens on the address in [telemetry] listen (0.0.0.0 here): narrow it by hand",
        );
    }
    for (i, m) in t
        .all("metrics")
        .into_iter()
        .flat_map(list_items)
        .enumerate()
    {
        let path = format!("telemetry.metrics[{i}]");
        let Some(o) = Obj::new(m, &path) else {
            continue;
        };
        let parts: Vec<String> = ["namespace", "subsystem", "name"]
            .iter()
            .filter_map(|k| ctx.string(&o, k))
            .filter(|s| !s.is_empty())
            .collect();
        let kind = match ctx.string(&o, "type").as_deref() {
            Some("counter") => Some("counter"),
            Some("gauge") => Some("gauge"),
            other => {
                ctx.unmapped(
                    m,
                    &path,
                    format!(
                        "a {} metric: rewire's [[metric]]s are counters and gauges",
                        other.unwrap_or("typeless")
                    ),
                );
                None
            }
        };
        let help = ctx.string(&o, "help");
        ctx.rest(&o, "not a metric setting rewire knows");
        if let Some(kind) = kind
            && !parts.is_empty()
        {
            ctx.note(
                m,
                &path,
                "set it with `rewire metric NAME VALUE` (ContainerPilot's -putmetric)",
            );
            plan.metrics.push(Metric {
                name: parts.join("_"),
                kind,
                help,
            });
        }
    }
    if let Some(n) = t.get("sensors") {
        ctx.unmapped(
            n,
            "telemetry.sensors",
            "no sensors in rewire: run the check as a [[task]] with `metric` (see docs/configuration.md)",
        );
    }
    ctx.rest(t, "not a telemetry setting rewire knows");
}

/// The items of a list node (a lone value counts as one).
fn list_items(n: &Node) -> Vec<&Node> {
    match &n.value {
        Value::List(items) => items.iter().collect(),
        _ => vec![n],
    }
}
