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
//! a job the app waits for with `exitSuccess` is `pre_start`, and the long-running app is
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
    Catalog, Command, Finding, Job as PlanJob, Location, Plan, Reload, Run, Service, Task,
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
    if let Some(n) = top.get("telemetry") {
        ctx.unmapped(n, "telemetry", "not supported yet ([telemetry] listen = \"ADDR:PORT\" is coming); metrics and sensors too");
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
