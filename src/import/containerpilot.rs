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

/// A file ContainerPilot could render but this import cannot read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub line: usize,
    pub col: usize,
    pub what: String,
}

/// Private-use characters marking where a placeholder was (they cannot occur in a config).
const OPEN: char = '\u{E000}';
const CLOSE: char = '\u{E001}';

struct Var {
    name: String,
    default: Option<String>,
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

// ---- placeholders

/// Rewrites the config's Go template actions as markers that survive JSON parsing.
fn replace_placeholders(ctx: &mut Ctx) -> Result<(String, Vec<Var>), Unreadable> {
    let src = ctx.src;
    let pieces = gotmpl::placeholders(src).map_err(|e| Unreadable {
        line: e.line,
        col: e.col,
        what: format!("cannot read the config's template syntax: {}", e.what),
    })?;
    let mut out = String::with_capacity(src.len());
    let mut vars = Vec::new();
    let mut scan = JsonScan::default();
    for piece in pieces {
        match piece {
            Piece::Text(r) => {
                scan.feed(&src[r.clone()]);
                out.push_str(&src[r]);
            }
            Piece::Var {
                name,
                default,
                span,
            } => {
                let (line, col) = gotmpl::line_col(src, span.start);
                let marker = format!("{OPEN}{}{CLOSE}", vars.len());
                let shown = match &default {
                    Some(d) => format!("${{{name}:-{d}}}"),
                    None => format!("${{{name}}}"),
                };
                if scan.in_string() {
                    out.push_str(&marker);
                } else {
                    out.push('"');
                    out.push_str(&marker);
                    out.push('"');
                    ctx.findings.push(Finding {
                        at: Location::Pos {
                            file: ctx.file.to_path_buf(),
                            line,
                            col,
                        },
                        what: format!(
                            "{} outside a JSON string is read as the string \"{shown}\" (rewire reads numbers from ${{VAR}} strings)",
                            &src[span]
                        ),
                        needs_person: false,
                    });
                }
                vars.push(Var { name, default });
            }
            Piece::Other { span } => {
                let (line, col) = gotmpl::line_col(src, span.start);
                if !scan.in_string() {
                    return Err(Unreadable {
                        line,
                        col,
                        what: format!(
                            "template logic {} outside a JSON string: render the config first (the environment it needs is the container's) and import the result",
                            &src[span]
                        ),
                    });
                }
                ctx.findings.push(Finding {
                    at: Location::Pos {
                        file: ctx.file.to_path_buf(),
                        line,
                        col,
                    },
                    what: format!(
                        "{} is Go template logic; only {{{{ .VAR }}}} and {{{{ .VAR | default \"x\" }}}} become ${{VAR}}: kept as text, rewrite it",
                        &src[span.clone()]
                    ),
                    needs_person: true,
                });
                // Kept as text inside the string: escape it for that string's quotes.
                let quote = scan.quote.unwrap_or('"');
                let mut kept = String::new();
                for c in src[span].chars() {
                    if c == '\\' || c == quote {
                        kept.push('\\');
                    }
                    kept.push(c);
                }
                out.push_str(&kept);
            }
        }
    }
    Ok((out, vars))
}

/// Tracks whether a position in JSON5 text is inside a string.
#[derive(Default)]
struct JsonScan {
    quote: Option<char>,
    escaped: bool,
    line_comment: bool,
    block_comment: bool,
    last: char,
}

impl JsonScan {
    fn in_string(&self) -> bool {
        self.quote.is_some()
    }

    fn feed(&mut self, text: &str) {
        for c in text.chars() {
            if let Some(q) = self.quote {
                if self.escaped {
                    self.escaped = false;
                } else if c == '\\' {
                    self.escaped = true;
                } else if c == q {
                    self.quote = None;
                }
            } else if self.line_comment {
                if c == '\n' {
                    self.line_comment = false;
                }
            } else if self.block_comment {
                if self.last == '*' && c == '/' {
                    self.block_comment = false;
                }
            } else if c == '"' || c == '\'' {
                self.quote = Some(c);
            } else if self.last == '/' && c == '/' {
                self.line_comment = true;
            } else if self.last == '/' && c == '*' {
                self.block_comment = true;
            }
            self.last = c;
        }
    }
}

/// Replaces markers in every string by `${VAR}` / `${VAR:-x}`, escaping a literal `${`.
fn expand(ctx: &mut Ctx, node: &mut Node, vars: &[Var], path: &str) {
    match &mut node.value {
        Value::Str(s) => {
            let (text, bad) = expand_str(s, vars);
            *s = text;
            if let Some(d) = bad {
                let n = node.clone();
                ctx.unmapped(&n, path, format!("the default {d:?} holds a `}}`, which ${{VAR:-default}} cannot carry; the variable is used without it"));
            }
        }
        Value::List(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand(ctx, item, vars, &format!("{path}[{i}]"));
            }
        }
        Value::Map(entries) => {
            for (k, v) in entries.iter_mut() {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                expand(ctx, v, vars, &p);
            }
        }
        _ => {}
    }
}

fn expand_str(s: &str, vars: &[Var]) -> (String, Option<String>) {
    let mut out = String::with_capacity(s.len());
    let mut bad = None;
    let mut rest = s;
    while let Some(start) = rest.find(OPEN) {
        out.push_str(&rest[..start].replace("${", "$${"));
        let after = &rest[start + OPEN.len_utf8()..];
        let Some(end) = after.find(CLOSE) else {
            out.push_str(after);
            return (out, bad);
        };
        let var = after[..end].parse::<usize>().ok().and_then(|i| vars.get(i));
        match var {
            Some(Var {
                name,
                default: Some(d),
            }) if !d.contains('}') => out.push_str(&format!("${{{name}:-{d}}}")),
            Some(Var { name, default }) => {
                if let Some(d) = default {
                    bad = Some(d.clone());
                }
                out.push_str(&format!("${{{name}}}"));
            }
            None => {}
        }
        rest = &after[end + CLOSE.len_utf8()..];
    }
    out.push_str(&rest.replace("${", "$${"));
    (out, bad)
}

// ---- shared pieces

fn consul(ctx: &mut Ctx, top: &Obj, plan: &mut Plan) {
    let Some(n) = top.get("consul") else {
        return;
    };
    let mut cat = Catalog {
        origin: format!("from {}: consul", ctx.file.display()),
        ..Catalog::default()
    };
    match &n.value {
        Value::Str(s) => cat.address = Some(s.clone()),
        Value::Map(_) => {
            if let Some(c) = Obj::new(n, "consul") {
                let address = ctx.string(&c, "address");
                let scheme = ctx.string(&c, "scheme");
                cat.address = match (address, scheme) {
                    (Some(a), Some(s)) if !a.contains("://") => Some(format!("{s}://{a}")),
                    (a, _) => a,
                };
                cat.token = ctx.string(&c, "token");
                if let Some(t) = c.get("tls").and_then(|t| Obj::new(t, "consul.tls")) {
                    cat.tls.ca = ctx.string(&t, "cafile");
                    cat.tls.cert = ctx.string(&t, "clientcert");
                    cat.tls.key = ctx.string(&t, "clientkey");
                    cat.tls.server_name = ctx.string(&t, "servername");
                    cat.tls.verify = ctx.boolean(&t, "verify");
                    if let Some(p) = t.get("capath") {
                        ctx.unmapped(p, "consul.tls.capath", "no CA directory in rewire.toml: set CONSUL_CAPATH in rewire's environment, or name one file as [catalog.tls] ca");
                    }
                    ctx.rest(&t, "not a TLS setting rewire knows");
                }
                ctx.rest(&c, "not a Consul setting rewire knows");
            }
        }
        _ => ctx.unmapped(
            n,
            "consul",
            format!("expected an address, found {}", n.type_name()),
        ),
    }
    plan.catalog = Some(cat);
}

/// A ContainerPilot command: a string split into words, or an array.
fn command(ctx: &mut Ctx, n: &Node, path: &str) -> Option<Vec<String>> {
    match &n.value {
        Value::Str(s) => match argv::split(s) {
            Ok(split) if split.argv.is_empty() => None,
            Ok(split) => {
                if split.shell_syntax {
                    ctx.note(n, path, "has shell syntax (pipes, $VAR, ...): ContainerPilot ran no shell either, so it stays words; write { shell = \"...\" } if a shell was meant");
                }
                Some(split.argv)
            }
            Err(e) => {
                ctx.unmapped(n, path, e);
                None
            }
        },
        Value::List(items) => {
            let mut out = Vec::new();
            for i in items {
                match &i.value {
                    Value::Str(s) | Value::Num(s) => out.push(s.clone()),
                    _ => {
                        ctx.unmapped(i, path, "expected strings in the command");
                        return None;
                    }
                }
            }
            (!out.is_empty()).then_some(out)
        }
        _ => {
            ctx.unmapped(
                n,
                path,
                format!("expected a command, found {}", n.type_name()),
            );
            None
        }
    }
}

/// Turns the `-template` flags of a consul-template call into `[[template]]`s, merging
/// calls that write the same destination (preStart renders once, onChange re-renders and
/// reloads: one rewire template does both).
fn consul_template_call(
    ctx: &mut Ctx,
    cli: &Cli,
    n: &Node,
    path: &str,
    templates: &mut Templates,
    plan: &mut Plan,
) {
    for flag in &cli.unmapped {
        ctx.unmapped(n, path, format!("consul-template flag {flag} has no rewire equivalent (-config: import that file with `rewire import consul-template`)"));
    }
    if let Some(addr) = &cli.consul {
        match &mut plan.catalog {
            None => {
                plan.catalog = Some(Catalog {
                    address: Some(addr.clone()),
                    origin: format!("from {}: {path} (-consul)", ctx.file.display()),
                    ..Catalog::default()
                });
            }
            Some(c) if c.address.as_deref() != Some(addr.as_str()) => {
                ctx.note(n, path, format!("-consul {addr} differs from the catalog address {}; rewire uses one catalog", c.address.as_deref().unwrap_or("(default)")));
            }
            Some(_) => {}
        }
    }
    if cli.templates.is_empty() {
        ctx.unmapped(
            n,
            path,
            "runs consul-template without -template: nothing to convert",
        );
    }
    for (src, dst, cmd) in &cli.templates {
        let Some(dst) = dst else {
            ctx.unmapped(n, path, format!("-template {src} has no destination"));
            continue;
        };
        let reload = cmd
            .as_ref()
            .map(|c| Reload::Run(Run::new(Command::Shell(c.clone()))));
        if let Some(existing) = plan.templates.iter_mut().find(|t| &t.destination == dst) {
            if existing.reload.is_none() {
                existing.reload = reload;
            }
            existing.origin.push_str(&format!(", {path}"));
            continue;
        }
        let opts = gotmpl::Options::default();
        let (source, disabled) = match templates.convert(ctx, Source::File(src), &opts, n, path) {
            Ok(rel) => (rel, None),
            Err(why) => (src.clone(), Some(why)),
        };
        plan.templates.push(Template {
            source,
            destination: dst.clone(),
            perms: None,
            reload,
            wait: cli.wait.as_ref().map(|w| match w.split_once(':') {
                Some((a, b)) => Wait {
                    min: a.into(),
                    max: Some(b.into()),
                },
                None => Wait {
                    min: w.clone(),
                    max: None,
                },
            }),
            backup: false,
            origin: format!("from {}: {path}", ctx.file.display()),
            disabled,
        });
    }
}

/// A hook command; a `consul-template` call is turned into templates and returns
/// `["rewire", "render"]` in its place.
fn hook(
    ctx: &mut Ctx,
    n: &Node,
    path: &str,
    templates: &mut Templates,
    plan: &mut Plan,
) -> Option<Command> {
    let argv = command(ctx, n, path)?;
    if let Some(cli) = consul_template::parse_cli(&argv) {
        consul_template_call(ctx, &cli, n, path, templates, plan);
        ctx.note(
            n,
            path,
            "consul-template -once became [[template]]s rendered by `rewire render`",
        );
        return Some(Command::Argv(vec!["rewire".into(), "render".into()]));
    }
    Some(Command::Argv(argv))
}

/// `interfaces`: rewire takes one interface name or a literal address.
fn interfaces(ctx: &mut Ctx, obj: &Obj, svc: &mut Service) {
    let Some(n) = obj.get("interfaces") else {
        return;
    };
    let path = obj.child("interfaces");
    let Some(list) = ctx.strings(obj, "interfaces") else {
        return;
    };
    let Some(first) = list.first() else {
        return;
    };
    if list.len() > 1 {
        ctx.note(
            n,
            &path,
            format!("rewire takes one interface; used the first, {first:?}"),
        );
    }
    if let Some(addr) = first.strip_prefix("static:") {
        svc.address = Some(addr.to_string());
    } else if first == "inet" {
        // rewire's default: the first non-loopback IPv4 address.
    } else if let Some(iface) = first.strip_suffix(":inet").or(Some(first.as_str()))
        && !iface.contains(['[', '/', ':'])
        && iface != "inet6"
    {
        svc.interface = Some(iface.to_string());
    } else {
        ctx.unmapped(n, &path, format!("{first:?}: rewire takes an interface name (eth0, its first IPv4 address), static:ADDRESS or inet; IPv6, CIDR and index forms are not supported"));
    }
}

/// The Consul registration options of a service or job.
fn consul_options(ctx: &mut Ctx, obj: &Obj, svc: &mut Service) {
    let Some(c) = obj
        .get("consul")
        .and_then(|n| Obj::new(n, &obj.child("consul")))
    else {
        return;
    };
    if let Some(d) = ctx.duration(&c, "deregisterCriticalServiceAfter") {
        svc.deregister_after = Some(d);
    }
    if let Some(n) = c.get("enableTagOverride") {
        ctx.unmapped(
            n,
            &c.child("enableTagOverride"),
            "not supported: rewire registers the tags it is given",
        );
    }
    ctx.rest(&c, "not a Consul registration option rewire knows");
}

fn port(ctx: &mut Ctx, obj: &Obj) -> Option<String> {
    let n = obj.get("port")?;
    match &n.value {
        Value::Num(s) | Value::Str(s) => Some(s.clone()),
        _ => {
            ctx.unmapped(n, &obj.child("port"), "expected a port number");
            None
        }
    }
}

// ---- v2

fn v2(ctx: &mut Ctx, top: &Obj, templates: &mut Templates, plan: &mut Plan) {
    if let Some(n) = top.get("preStart") {
        plan.main.pre_start = hook(ctx, n, "preStart", templates, plan);
    }
    for (key, slot) in [("preStop", 0), ("postStop", 1)] {
        if let Some(n) = top.get(key) {
            let c = command(ctx, n, key).map(Command::Argv);
            if slot == 0 {
                plan.main.pre_stop = c;
            } else {
                plan.main.post_stop = c;
            }
        }
    }
    for (i, n) in top.all("services").into_iter().enumerate() {
        let path = format!("services[{i}]");
        if let Some(s) = service_v2(ctx, n, &path) {
            plan.services.push(s);
        }
    }
    for (i, n) in top.all("backends").into_iter().enumerate() {
        backend(ctx, n, &format!("backends[{i}]"), templates, plan);
    }
    for (i, n) in top.all("coprocesses").into_iter().enumerate() {
        ctx.unmapped(
            n,
            &format!("coprocesses[{i}]"),
            "v2 co-processes are not mapped: write a [[job]] (name, exec, restart) for each",
        );
    }
    for (i, n) in top.all("tasks").into_iter().enumerate() {
        let path = format!("tasks[{i}]");
        let Some(t) = Obj::new(n, &path) else {
            continue;
        };
        let name = ctx.string(&t, "name");
        let every = ctx.duration(&t, "frequency");
        let timeout = ctx.duration(&t, "timeout");
        let exec = t
            .get("command")
            .and_then(|c| command(ctx, c, &t.child("command")));
        ctx.rest(&t, "not a task setting rewire knows");
        match (every, exec) {
            (Some(every), Some(exec)) => plan.tasks.push(Task {
                name,
                every,
                exec: Command::Argv(exec),
                timeout,
                origin: format!("from {}: {path}", ctx.file.display()),
            }),
            _ => ctx.unmapped(n, &path, "a task needs frequency and command"),
        }
    }
    if plan.main.pre_start.is_some()
        || plan.main.pre_stop.is_some()
        || plan.main.post_stop.is_some()
    {
        let n = top
            .get("preStart")
            .or_else(|| top.get("preStop"))
            .or_else(|| top.get("postStop"));
        if let Some(n) = n {
            ctx.note(n, "", "ContainerPilot v2 ran the command given on its own command line: add it as [main] exec = [...]");
        }
    }
}

fn service_v2(ctx: &mut Ctx, n: &Node, path: &str) -> Option<Service> {
    let Some(o) = Obj::new(n, path) else {
        ctx.unmapped(n, path, "expected an object");
        return None;
    };
    let mut svc = Service {
        name: ctx.string(&o, "name").unwrap_or_default(),
        port: port(ctx, &o).unwrap_or_default(),
        tags: ctx.strings(&o, "tags").unwrap_or_default(),
        interval: ctx.duration(&o, "poll"),
        ttl: ctx.duration(&o, "ttl"),
        origin: format!("from {}: {path}", ctx.file.display()),
        ..Service::default()
    };
    if let Some(h) = o.get("health") {
        svc.health = command(ctx, h, &o.child("health")).map(|a| Run::new(Command::Argv(a)));
    }
    interfaces(ctx, &o, &mut svc);
    consul_options(ctx, &o, &mut svc);
    ctx.rest(&o, "not a service setting rewire knows");
    if svc.name.is_empty() || svc.port.is_empty() {
        ctx.unmapped(n, path, "a service needs name and port");
        return None;
    }
    Some(svc)
}

fn backend(ctx: &mut Ctx, n: &Node, path: &str, templates: &mut Templates, plan: &mut Plan) {
    let Some(o) = Obj::new(n, path) else {
        ctx.unmapped(n, path, "expected an object");
        return;
    };
    let (name, tag) = watched(ctx, &o, "poll");
    if let Some(c) = o.get("onChange") {
        let p = o.child("onChange");
        on_change(ctx, &name, tag, c, &p, None, templates, plan);
    } else {
        ctx.note(n, path, "no onChange: nothing to do in rewire");
    }
    ctx.rest(&o, "not a backend setting rewire knows");
}

/// The service a v2 backend or a v3 watch follows: its name and tag. Its poll interval and
/// datacenter are reported.
fn watched(ctx: &mut Ctx, o: &Obj, poll: &str) -> (String, Option<String>) {
    let name = ctx.string(o, "name").unwrap_or_default();
    let tag = ctx.string(o, "tag");
    if let Some(p) = o.get(poll) {
        ctx.note(
            p,
            &o.child(poll),
            "rewire watches with blocking queries and reacts at once; no poll interval",
        );
    }
    if let Some(d) = o.get("dc") {
        ctx.unmapped(
            d,
            &o.child("dc"),
            "watching another datacenter is not supported yet",
        );
    }
    (name, tag)
}

/// A command run when a service changes: templates when it runs consul-template, else a
/// `[[watch]]`.
#[allow(clippy::too_many_arguments)]
fn on_change(
    ctx: &mut Ctx,
    service: &str,
    tag: Option<String>,
    c: &Node,
    path: &str,
    timeout: Option<String>,
    templates: &mut Templates,
    plan: &mut Plan,
) {
    let Some(argv) = command(ctx, c, path) else {
        return;
    };
    if let Some(cli) = consul_template::parse_cli(&argv) {
        if !cli.once {
            ctx.note(
                c,
                path,
                "consul-template without -once: rewire renders on every change anyway",
            );
        }
        consul_template_call(ctx, &cli, c, path, templates, plan);
        ctx.note(c, path, format!("renders templates: rewire re-renders when the services a template reads change, so no [[watch]] on {service:?} is needed"));
        return;
    }
    if service.is_empty() {
        ctx.unmapped(c, path, "no service name to watch");
        return;
    }
    plan.watches.push(Watch {
        service: service.to_string(),
        tag,
        on_change: Run {
            command: Command::Argv(argv),
            timeout,
        },
        origin: format!("from {}: {path}", ctx.file.display()),
    });
}

// ---- v3

#[derive(Debug, Clone, PartialEq)]
enum When {
    Startup,
    Interval(String),
    Event {
        source: String,
        event: String,
        once: bool,
    },
    Invalid,
}

struct Job<'a> {
    name: String,
    node: &'a Node,
    obj: Obj<'a>,
    path: String,
    when: When,
    /// `when.timeout`.
    timeout: Option<String>,
}

fn v3(ctx: &mut Ctx, top: &Obj, templates: &mut Templates, plan: &mut Plan) {
    let mut jobs = Vec::new();
    for (i, n) in top.all("jobs").into_iter().enumerate() {
        let path = format!("jobs[{i}]");
        let Some(obj) = Obj::new(n, &path) else {
            ctx.unmapped(n, &path, "expected an object");
            continue;
        };
        let name = ctx.string(&obj, "name").unwrap_or_default();
        let (when, timeout) = when(ctx, &obj);
        jobs.push(Job {
            name,
            node: n,
            obj,
            path,
            when,
            timeout,
        });
    }
    // Watches: name -> (tag, node). Used by the jobs that react to them.
    let mut watches = Vec::new();
    for (i, n) in top.all("watches").into_iter().enumerate() {
        let path = format!("watches[{i}]");
        let Some(w) = Obj::new(n, &path) else {
            continue;
        };
        let (name, tag) = watched(ctx, &w, "interval");
        ctx.rest(&w, "not a watch setting rewire knows");
        watches.push((name, tag, n, false));
    }

    let names: Vec<String> = jobs.iter().map(|j| j.name.clone()).collect();
    // A job another waits for with exitSuccess is a setup step: pre_start.
    let setup: Vec<String> = jobs
        .iter()
        .filter_map(|j| match &j.when {
            When::Event { source, event, .. }
                if event == "exitSuccess" && names.contains(source) =>
            {
                Some(source.clone())
            }
            _ => None,
        })
        .collect();
    let runs_consul_template = |j: &Job| {
        j.obj
            .get("exec")
            .and_then(|e| match &e.value {
                Value::Str(s) => argv::split(s).ok().map(|s| s.argv),
                Value::List(items) => Some(
                    items
                        .iter()
                        .filter_map(|i| match &i.value {
                            Value::Str(s) => Some(s.clone()),
                            _ => None,
                        })
                        .collect(),
                ),
                _ => None,
            })
            .and_then(|argv| consul_template::parse_cli(&argv))
            .is_some()
    };
    // Long-running candidates for [main].
    let candidates: Vec<usize> = jobs
        .iter()
        .enumerate()
        .filter(|(_, j)| {
            !setup.contains(&j.name)
                && j.obj.has("exec")
                && !runs_consul_template(j)
                && match &j.when {
                    When::Startup => true,
                    When::Event {
                        source,
                        event,
                        once,
                    } => {
                        *once
                            && names.contains(source)
                            && !matches!(event.as_str(), "stopping" | "stopped")
                    }
                    _ => false,
                }
        })
        .map(|(i, _)| i)
        .collect();
    let depends_on_candidate = |i: &usize| match &jobs[*i].when {
        When::Event { source, .. } => candidates.iter().any(|c| &jobs[*c].name == source),
        _ => false,
    };
    let main_idx = candidates
        .iter()
        .copied()
        .find(|i| depends_on_candidate(i))
        .or_else(|| {
            candidates
                .iter()
                .copied()
                .find(|i| jobs[*i].obj.has("port"))
        })
        .or_else(|| candidates.first().copied());
    let main_name = main_idx.map(|i| jobs[i].name.clone());
    let setup_for_main = |job: &Job| {
        setup.contains(&job.name)
            && main_name.is_some()
            && jobs
                .iter()
                .find(|u| matches!(&u.when, When::Event { source, event, .. } if source == &job.name && event == "exitSuccess"))
                .map(|u| &u.name)
                == main_name.as_ref()
    };
    // What neither [main], its hooks, a task, a watch handler nor a template is: a [[job]]
    // (a co-process beside the app, or a job started by another job's event).
    let becomes_job = |i: usize, job: &Job| {
        if Some(i) == main_idx || setup_for_main(job) || job.name.is_empty() {
            return false;
        }
        match &job.when {
            When::Startup => !runs_consul_template(job),
            When::Event { source, event, .. } => {
                // [main] has no health command in rewire (its [[service]] has one): a job
                // cannot wait for main's health.
                names.contains(source)
                    && event_word(event).is_some()
                    && !(main_name.as_ref() == Some(source)
                        && matches!(
                            event.as_str(),
                            "stopping" | "stopped" | "healthy" | "unhealthy"
                        ))
            }
            _ => false,
        }
    };

    for (i, job) in jobs.iter().enumerate() {
        let j = &job.obj;
        let path = job.path.as_str();
        let as_job = becomes_job(i, job);
        // Registration belongs to the service, whatever runs it.
        if j.has("port") {
            let mut svc = Service {
                name: job.name.clone(),
                port: port(ctx, j).unwrap_or_default(),
                tags: ctx.strings(j, "tags").unwrap_or_default(),
                origin: format!("from {}: {path}", ctx.file.display()),
                ..Service::default()
            };
            health(ctx, j, &mut svc);
            if as_job {
                // The [[job]] runs the health command; the service reports it.
                svc.health = None;
                svc.job = Some(job.name.clone());
            }
            interfaces(ctx, j, &mut svc);
            consul_options(ctx, j, &mut svc);
            if svc.name.is_empty() {
                ctx.unmapped(job.node, path, "a job with a port needs a name to register");
            } else {
                plan.services.push(svc);
            }
        }
        if as_job {
            to_job(ctx, job, main_name.as_deref(), plan);
        } else if Some(i) == main_idx {
            main_job(ctx, job, &jobs, plan);
        } else if setup.contains(&job.name) {
            let user = jobs.iter().find(|u| matches!(&u.when, When::Event { source, event, .. } if source == &job.name && event == "exitSuccess"));
            if main_name.is_some() && user.map(|u| &u.name) == main_name.as_ref() {
                if let Some(e) = j.get("exec") {
                    plan.main.pre_start = hook(ctx, e, &j.child("exec"), templates, plan);
                }
                if job.when != When::Startup {
                    ctx.unmapped(job.node, &j.child("when"), "a pre_start that waits for another event: not mapped (make it a [[job]] with that `when`, and [main] wait for its \"succeeded\")");
                }
                mark_timing(ctx, job);
            } else {
                unsupported_job(ctx, job);
            }
        } else {
            match &job.when {
                When::Interval(every) => {
                    let exec = j
                        .get("exec")
                        .and_then(|e| command(ctx, e, &j.child("exec")));
                    let timeout = ctx.duration(j, "timeout");
                    if let Some(exec) = exec {
                        plan.tasks.push(Task {
                            name: (!job.name.is_empty()).then(|| job.name.clone()),
                            every: every.clone(),
                            exec: Command::Argv(exec),
                            timeout,
                            origin: format!("from {}: {path}", ctx.file.display()),
                        });
                    }
                }
                When::Event {
                    source,
                    event,
                    once,
                } if source.starts_with("watch.") && event == "changed" => {
                    let service = source.trim_start_matches("watch.");
                    let tag = watches.iter_mut().find(|w| w.0 == service).and_then(|w| {
                        w.3 = true;
                        w.1.clone()
                    });
                    if *once {
                        ctx.note(
                            job.node,
                            &j.child("when"),
                            "`once: changed` runs on every change in rewire",
                        );
                    }
                    let timeout = ctx.duration(j, "timeout");
                    if let Some(e) = j.get("exec") {
                        on_change(
                            ctx,
                            service,
                            tag,
                            e,
                            &j.child("exec"),
                            timeout,
                            templates,
                            plan,
                        );
                    }
                }
                When::Event { source, event, .. }
                    if main_name.as_ref() == Some(source)
                        && (event == "stopping" || event == "stopped") =>
                {
                    let c = j
                        .get("exec")
                        .and_then(|e| command(ctx, e, &j.child("exec")))
                        .map(Command::Argv);
                    if event == "stopping" {
                        plan.main.pre_stop = c;
                    } else {
                        plan.main.post_stop = c;
                    }
                    mark_timing(ctx, job);
                }
                _ if runs_consul_template(job) && job.when == When::Startup => {
                    if let Some(e) = j.get("exec")
                        && let Some(argv) = command(ctx, e, &j.child("exec"))
                        && let Some(cli) = consul_template::parse_cli(&argv)
                    {
                        consul_template_call(ctx, &cli, e, &j.child("exec"), templates, plan);
                        ctx.note(e, &j.child("exec"), "a long-running consul-template job: rewire's daemon renders these templates itself");
                    }
                    mark_timing(ctx, job);
                }
                _ => unsupported_job(ctx, job),
            }
        }
        for key in ["logging"] {
            if let Some(n) = j.get(key) {
                ctx.note(
                    n,
                    &j.child(key),
                    "children's output is captured into rewire's log; there is no raw mode",
                );
            }
        }
        ctx.rest(j, "not a job setting rewire knows");
    }
    for (name, _, n, used) in &watches {
        if !used {
            ctx.note(
                n,
                "watches",
                format!("watch {name:?}: no job reacts to its changes, so nothing to do in rewire"),
            );
        }
    }
}

/// Reads `when`, and its `timeout`.
fn when(ctx: &mut Ctx, j: &Obj) -> (When, Option<String>) {
    let Some(n) = j.get("when") else {
        return (When::Startup, None);
    };
    let Some(w) = Obj::new(n, &j.child("when")) else {
        ctx.unmapped(n, &j.child("when"), "expected an object");
        return (When::Invalid, None);
    };
    let out = if let Some(every) = ctx.duration(&w, "interval") {
        When::Interval(every)
    } else {
        let source = ctx.string(&w, "source").unwrap_or_default();
        let once = ctx.string(&w, "once");
        let each = ctx.string(&w, "each");
        match (once, each) {
            (Some(e), None) => When::Event {
                source,
                event: e,
                once: true,
            },
            (None, Some(e)) => When::Event {
                source,
                event: e,
                once: false,
            },
            _ if source.is_empty() => When::Startup,
            _ => When::Invalid,
        }
    };
    let timeout = ctx.duration(&w, "timeout");
    ctx.rest(&w, "not a when setting rewire knows");
    (out, timeout)
}

/// Marks the timing keys of a job as handled (their meaning moved with the mapping).
fn mark_timing(ctx: &mut Ctx, job: &Job) {
    let j = &job.obj;
    for key in ["restarts", "stopTimeout", "timeout"] {
        if let Some(n) = j.get(key) {
            ctx.note(
                n,
                &j.child(key),
                "has no meaning for a hook in rewire (hooks run once, with rewire's timeouts)",
            );
        }
    }
}

/// A v3 job as a `[[job]]`: exec, restarts, stopTimeout, health, when.
fn to_job(ctx: &mut Ctx, job: &Job, main_name: Option<&str>, plan: &mut Plan) {
    let j = &job.obj;
    let mut out = PlanJob {
        name: job.name.clone(),
        origin: format!("from {}: {}", ctx.file.display(), job.path),
        ..PlanJob::default()
    };
    if let Some(e) = j.get("exec") {
        out.exec = command(ctx, e, &j.child("exec")).map(Command::Argv);
    }
    (out.restart, out.restart_limit) = restarts(ctx, j);
    out.stop_timeout = ctx.duration(j, "stopTimeout");
    if j.has("health") {
        let mut svc = Service::default();
        health(ctx, j, &mut svc);
        out.health = svc.health;
        out.interval = svc.interval;
    }
    if let Some(n) = j.get("timeout") {
        ctx.unmapped(
            n,
            &j.child("timeout"),
            "a [[job]] has no run-time limit in rewire (stop it from a [[task]] if it must not run long)",
        );
    }
    if let When::Event {
        source,
        event,
        once,
    } = &job.when
    {
        let after = if main_name == Some(source.as_str()) {
            crate::config::MAIN_JOB.to_string()
        } else {
            source.clone()
        };
        out.when = Some(PlanWhen {
            after,
            is: event_word(event).unwrap_or(event).to_string(),
            timeout: job.timeout.clone(),
        });
        out.each = !once;
    }
    plan.jobs.push(out);
}

/// `restarts`: "unlimited" is `always`; "never" or 0 is `never`; N is `always` with
/// `restart_limit = N`.
fn restarts(ctx: &mut Ctx, j: &Obj) -> (Option<&'static str>, Option<u32>) {
    let Some(n) = j.get("restarts") else {
        return (None, None);
    };
    match &n.value {
        Value::Str(s) if s == "unlimited" => (Some("always"), None),
        Value::Str(s) if s == "never" => (Some("never"), None),
        Value::Num(s) if s == "0" => (Some("never"), None),
        Value::Num(s) => match s.parse::<u32>() {
            Ok(limit) => (Some("always"), Some(limit)),
            Err(_) => {
                ctx.unmapped(n, &j.child("restarts"), "expected a whole number");
                (None, None)
            }
        },
        _ => {
            ctx.unmapped(
                n,
                &j.child("restarts"),
                "expected \"unlimited\", \"never\" or a number",
            );
            (None, None)
        }
    }
}

fn unsupported_job(ctx: &mut Ctx, job: &Job) {
    let j = &job.obj;
    let what = match &job.when {
        When::Startup => "runs beside the app".to_string(),
        When::Event { source, event, .. } => format!("runs on {source:?} {event}"),
        When::Interval(_) => "runs periodically".to_string(),
        When::Invalid => "has a `when` rewire cannot read".to_string(),
    };
    ctx.unmapped(
        job.node,
        &job.path,
        format!(
            "job {:?} {what}: not mapped (a [[job]] needs a name, and its `when` an event of another job: healthy, unhealthy, exitSuccess, exitFailed, stopping, stopped)",
            job.name
        ),
    );
    // One finding for the whole job: its fields go with it.
    for (k, _) in j.unused() {
        let _ = j.get(k);
    }
}

fn health(ctx: &mut Ctx, j: &Obj, svc: &mut Service) {
    let Some(h) = j
        .get("health")
        .and_then(|n| Obj::new(n, &j.child("health")))
    else {
        return;
    };
    let timeout = ctx.duration(&h, "timeout");
    if let Some(e) = h.get("exec") {
        svc.health = command(ctx, e, &h.child("exec")).map(|a| Run {
            command: Command::Argv(a),
            timeout,
        });
    }
    svc.interval = ctx.duration(&h, "interval");
    svc.ttl = ctx.duration(&h, "ttl");
    if let Some(n) = h.get("logging") {
        ctx.note(
            n,
            &h.child("logging"),
            "health output is captured into rewire's log; there is no raw mode",
        );
    }
    ctx.rest(&h, "not a health setting rewire knows");
}

fn main_job(ctx: &mut Ctx, job: &Job, jobs: &[Job], plan: &mut Plan) {
    let j = &job.obj;
    plan.main.origin = format!(
        "from {}: {} (job {:?})",
        ctx.file.display(),
        job.path,
        job.name
    );
    if let Some(e) = j.get("exec") {
        plan.main.exec = command(ctx, e, &j.child("exec")).map(Command::Argv);
    }
    if let Some(n) = j.get("restarts") {
        plan.main.restart = match &n.value {
            Value::Str(s) if s == "unlimited" => Some("always"),
            Value::Str(s) if s == "never" => Some("never"),
            Value::Num(s) if s == "0" => Some("never"),
            Value::Num(s) => {
                ctx.note(
                    n,
                    &j.child("restarts"),
                    format!(
                        "rewire has no restart count: restarts {s} became restart = \"always\""
                    ),
                );
                Some("always")
            }
            _ => {
                ctx.unmapped(
                    n,
                    &j.child("restarts"),
                    "expected \"unlimited\", \"never\" or a number",
                );
                None
            }
        };
    }
    if let Some(t) = ctx.duration(j, "stopTimeout") {
        plan.main.stop_timeout = Some(t);
    }
    if let Some(n) = j.get("timeout") {
        ctx.unmapped(n, &j.child("timeout"), "no run-time limit for [main]");
    }
    match &job.when {
        When::Startup => {}
        When::Event { source, event, .. }
            if event == "exitSuccess"
                && jobs
                    .iter()
                    .any(|s| &s.name == source && s.when == When::Startup) => {}
        When::Event {
            source,
            event,
            once,
        } => {
            let at = j.get("when").unwrap_or(job.node);
            match event_word(event) {
                Some(is) if jobs.iter().any(|s| &s.name == source) => {
                    plan.main.when = Some(PlanWhen {
                        after: source.clone(),
                        is: is.to_string(),
                        timeout: job.timeout.clone(),
                    });
                    if !once {
                        ctx.note(at, &j.child("when"), "[main] starts once: `each` became the first occurrence");
                    }
                }
                _ => ctx.unmapped(
                    at,
                    &j.child("when"),
                    format!("starting [main] on {source:?} {event}: rewire's `when` waits for an event of a job (healthy, unhealthy, exitSuccess, exitFailed, stopping, stopped)"),
                ),
            }
        }
        _ => {}
    }
}

/// ContainerPilot's event names in the words of rewire's `when.is`; `None` for an event
/// rewire's jobs do not have.
fn event_word(event: &str) -> Option<&'static str> {
    Some(match event {
        "exitSuccess" => "succeeded",
        "exitFailed" => "failed",
        "healthy" => "healthy",
        "unhealthy" => "unhealthy",
        "stopping" => "stopping",
        "stopped" => "stopped",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_become_interpolation_and_literal_dollars_are_escaped() {
        let vars = vec![
            Var {
                name: "CONSUL".into(),
                default: None,
            },
            Var {
                name: "PORT".into(),
                default: Some("80".into()),
            },
        ];
        let s = format!("http://{OPEN}0{CLOSE}:{OPEN}1{CLOSE}/${{x}}");
        assert_eq!(
            expand_str(&s, &vars).0,
            "http://${CONSUL}:${PORT:-80}/$${x}"
        );
    }

    #[test]
    fn json_scan_knows_strings_and_comments() {
        let mut s = JsonScan::default();
        s.feed("{ \"a\": \"x\\\"");
        assert!(s.in_string());
        s.feed("\", // \"\n b: '");
        assert!(s.in_string());
        s.feed("' /* \" */ ");
        assert!(!s.in_string());
    }
}
