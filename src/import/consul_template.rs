//! consul-template: its HCL config (or JSON), and its command line as ContainerPilot configs
//! call it (`consul-template -once -template src:dst:cmd`).
//!
//! The mapping follows consul-template's documented semantics: a template `command` is run
//! by a shell, so it becomes `reload = { shell = "..." }`; exec mode's child becomes `[main]`
//! and its `reload_signal` the reload of every template without a command; `max_stale`
//! allows stale reads; `wait` is rewire's quiescence in the same `min:max` form.

use super::argv;
use super::gotmpl;
use super::plan::{Catalog, Command, Plan, Reload, Run, Template};
use super::templates::{Source, Templates};
use super::tree::{Node, Value};
use super::walk::{Ctx, Obj};

/// Imports a consul-template config tree into `plan`.
pub fn import(ctx: &mut Ctx, root: &Node, templates: &mut Templates, plan: &mut Plan) {
    let Some(top) = Obj::new(root, "") else {
        ctx.unmapped(
            root,
            "",
            "the file is not a consul-template config (expected blocks and attributes)",
        );
        return;
    };
    // Delimiters default for every template (newer consul-template).
    let mut default_delims = ("{{".to_string(), "}}".to_string());
    if let Some(n) = top.get("default_delimiters")
        && let Some(d) = Obj::new(n, "default_delimiters")
    {
        if let Some(l) = ctx.string(&d, "left") {
            default_delims.0 = l;
        }
        if let Some(r) = ctx.string(&d, "right") {
            default_delims.1 = r;
        }
        ctx.rest(&d, "not a delimiter setting");
    }
    catalog(ctx, &top, plan);
    if let Some(w) = ctx.wait(&top, "wait") {
        plan.default_wait = Some(w);
    }
    let exec_reload = exec(ctx, &top, plan);
    for (i, n) in top.all("template").into_iter().enumerate() {
        let path = format!("template[{}]", i + 1);
        template(
            ctx,
            n,
            &path,
            &default_delims,
            &exec_reload,
            templates,
            plan,
        );
    }
    for key in ["vault"] {
        if let Some(n) = top.get(key) {
            ctx.unmapped(n, key, "Vault is not supported, and will not be: read secrets with another tool (e.g. Vault Agent) and template the files it writes");
        }
    }
    if let Some(n) = top.get("nomad") {
        ctx.unmapped(n, "nomad", "Nomad is not a rewire catalog");
    }
    for key in ["log_level", "log_file", "syslog"] {
        if let Some(n) = top.get(key) {
            ctx.note(
                n,
                key,
                "rewire logs to stderr; use `rewire --log-level LEVEL --log-format text|json`",
            );
        }
    }
    for key in ["kill_signal", "reload_signal"] {
        if let Some(n) = top.get(key) {
            ctx.note(n, key, "consul-template's own signals: rewire re-reads its config on SIGHUP and stops on SIGTERM/SIGINT ([main] stop_signals)");
        }
    }
    if let Some(n) = top.get("pid_file") {
        ctx.unmapped(n, "pid_file", "rewire writes no pid file; signal it through its control socket (`rewire status`) or its process supervisor");
    }
    if let Some(n) = top.get("deduplicate") {
        ctx.note(n, "deduplicate", "no de-duplication mode: every rewire watches Consul itself (one blocking query per distinct query)");
    }
    if let Some(n) = top.get("once") {
        ctx.note(n, "once", "use `rewire render` for a one-shot render");
    }
    ctx.rest(&top, "not a consul-template option rewire knows");
}

fn catalog(ctx: &mut Ctx, top: &Obj, plan: &mut Plan) {
    let mut cat = Catalog {
        origin: format!("from {}: consul", ctx.file.display()),
        ..Catalog::default()
    };
    let mut present = false;
    if let Some(n) = top.get("consul") {
        present = true;
        match &n.value {
            // consul-template before 0.16: `consul = "127.0.0.1:8500"`.
            Value::Str(s) => cat.address = Some(s.clone()),
            _ => {
                if let Some(c) = Obj::new(n, "consul") {
                    consul_block(ctx, &c, &mut cat);
                }
            }
        }
    }
    if let Some(s) = ctx.string(top, "token") {
        present = true;
        cat.token = Some(s);
    }
    if let Some(n) = top.get("max_stale") {
        present = true;
        match &n.value {
            Value::Str(s) if s == "0" || s == "0s" => {}
            Value::Num(s) if s == "0" => {}
            _ => {
                cat.stale = true;
                ctx.note(
                    n,
                    "max_stale",
                    "rewire's stale = true lets any server answer; it has no staleness bound",
                );
            }
        }
    }
    if let Some(n) = top.get("block_query_wait") {
        ctx.note(n, "block_query_wait", "rewire's [catalog] block_wait (60s by default) plays this part; set it by hand if needed");
    }
    if !present {
        // consul-template talks to Consul with no `consul` block too: the local agent, or
        // CONSUL_HTTP_ADDR and CONSUL_HTTP_TOKEN, which rewire's Consul backend reads as well.
        cat.origin = format!(
            "from {}: no consul block, so Consul as consul-template would find it (CONSUL_HTTP_ADDR, else 127.0.0.1:8500)",
            ctx.file.display()
        );
    }
    plan.catalog = Some(cat);
}

fn consul_block(ctx: &mut Ctx, c: &Obj, cat: &mut Catalog) {
    cat.address = ctx.string(c, "address");
    cat.token = ctx.string(c, "token");
    if let Some(ssl) = c.get("ssl").and_then(|n| Obj::new(n, "consul.ssl")) {
        let enabled = ctx.boolean(&ssl, "enabled").unwrap_or(false);
        cat.tls.verify = ctx.boolean(&ssl, "verify");
        cat.tls.cert = ctx.string(&ssl, "cert");
        cat.tls.key = ctx.string(&ssl, "key");
        cat.tls.ca = ctx.string(&ssl, "ca_cert");
        cat.tls.server_name = ctx.string(&ssl, "server_name");
        if let Some(n) = ssl.get("ca_path") {
            ctx.unmapped(n, "consul.ssl.ca_path", "no CA directory in rewire.toml: set CONSUL_CAPATH in rewire's environment, or name one file as [catalog.tls] ca");
        }
        ctx.rest(&ssl, "not an SSL setting rewire knows");
        if enabled
            && let Some(a) = &cat.address
            && !a.contains("://")
        {
            cat.address = Some(format!("https://{a}"));
        }
        if !enabled {
            cat.tls = Default::default();
        }
    }
    if let Some(n) = c.get("retry") {
        ctx.note(n, "consul.retry", "rewire retries forever with capped backoff and jitter ([catalog] retry = { base, max })");
    }
    if let Some(n) = c.get("auth") {
        ctx.unmapped(n, "consul.auth", "no basic auth in rewire.toml: set CONSUL_HTTP_AUTH=user:password in rewire's environment");
    }
    if let Some(n) = c.get("transport") {
        ctx.note(n, "consul.transport", "HTTP transport tuning has no rewire equivalent; rewire keeps one connection per watched query");
    }
    ctx.rest(c, "not a Consul setting rewire knows");
}

/// Exec mode: the child becomes `[main]`. Returns the reload for templates without a command.
fn exec(ctx: &mut Ctx, top: &Obj, plan: &mut Plan) -> Option<Reload> {
    let n = top.get("exec")?;
    let e = Obj::new(n, "exec")?;
    plan.main.origin = format!("from {}: exec", ctx.file.display());
    if let Some(c) = e.get("command") {
        plan.main.exec = command(ctx, c, "exec.command", false);
        // consul-template starts the child only once every template rendered, however long
        // that takes; rewire's default gives up waiting after a minute.
        plan.main.wait_for_templates = Some("forever".into());
    }
    if let Some(s) = ctx.string(&e, "kill_signal") {
        plan.main.stop_signal = Some(s);
    }
    if let Some(t) = ctx.duration(&e, "kill_timeout") {
        plan.main.stop_timeout = Some(t);
    }
    let reload = match ctx.string(&e, "reload_signal") {
        Some(s) if !s.is_empty() => Some(Reload::SignalMain(s)),
        _ => {
            ctx.unmapped(n, "exec", "without reload_signal consul-template restarts the child on every change; rewire does not restart [main] for a template: set reload_signal or give the templates a command");
            None
        }
    };
    if let Some(n) = e.get("splay") {
        ctx.unmapped(
            n,
            "exec.splay",
            "rewire signals main at once after a render (no random splay)",
        );
    }
    if let Some(n) = e.get("env") {
        ctx.unmapped(n, "exec.env", "env blocks are not supported, and will not be: set the environment of rewire itself (children inherit it)");
    }
    if let Some(n) = e.get("timeout") {
        ctx.unmapped(n, "exec.timeout", "no run-time limit for [main]");
    }
    if let Some(n) = e.get("enabled")
        && n.value == Value::Bool(false)
    {
        ctx.note(
            n,
            "exec.enabled",
            "exec is disabled: [main] is written anyway; remove it if unwanted",
        );
    }
    ctx.rest(&e, "not an exec setting rewire knows");
    reload
}

/// A command: a string (run by a shell when `shell`, else split when it holds no shell
/// syntax) or a list (argv).
///
/// consul-template never expanded `${...}` in its config: a `${f}` there is the shell's (a loop
/// variable, `${HOME:-/root}`). rewire.toml expands `${VAR}` when it loads, so each `${` is
/// written as `$${` (a literal `${`) and the shell still sees what it saw.
fn command(ctx: &mut Ctx, n: &Node, path: &str, shell: bool) -> Option<Command> {
    let literal = |s: &str| s.replace("${", "$${");
    match &n.value {
        Value::Str(s) if shell => Some(Command::Shell(literal(s))),
        Value::Str(s) => match argv::split(&literal(s)) {
            Ok(split) if !split.shell_syntax && !split.argv.is_empty() => {
                Some(Command::Argv(split.argv))
            }
            _ => {
                ctx.note(n, path, "has shell syntax, so it runs through /bin/sh -c as consul-template did; signals reach the shell, not the program");
                Some(Command::Shell(literal(s)))
            }
        },
        Value::List(items) => {
            let mut words = Vec::new();
            for i in items {
                match &i.value {
                    Value::Str(s) => words.push(literal(s)),
                    _ => {
                        ctx.unmapped(i, path, "expected strings");
                        return None;
                    }
                }
            }
            match words.len() {
                0 => None,
                // consul-template runs a one-element list through a shell too.
                1 => Some(Command::Shell(words.remove(0))),
                _ => Some(Command::Argv(words)),
            }
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

#[allow(clippy::too_many_arguments)]
fn template(
    ctx: &mut Ctx,
    n: &Node,
    path: &str,
    default_delims: &(String, String),
    exec_reload: &Option<Reload>,
    templates: &mut Templates,
    plan: &mut Plan,
) {
    let Some(t) = Obj::new(n, path) else {
        ctx.unmapped(n, path, "expected a template block");
        return;
    };
    let opts = gotmpl::Options {
        left_delimiter: ctx
            .string(&t, "left_delimiter")
            .unwrap_or_else(|| default_delims.0.clone()),
        right_delimiter: ctx
            .string(&t, "right_delimiter")
            .unwrap_or_else(|| default_delims.1.clone()),
        error_on_missing_key: ctx.boolean(&t, "error_on_missing_key").unwrap_or(false),
    };
    let destination = ctx.string(&t, "destination");
    let source = ctx.string(&t, "source");
    let contents = ctx.string(&t, "contents");
    let mut out = Template {
        source: String::new(),
        destination: destination.clone().unwrap_or_default(),
        perms: None,
        reload: None,
        wait: ctx.wait(&t, "wait"),
        backup: ctx.boolean(&t, "backup").unwrap_or(false),
        origin: format!("from {}: {path}", ctx.file.display()),
        disabled: None,
    };
    let converted = match (&source, &contents) {
        (Some(s), None) => templates.convert(ctx, Source::File(s), &opts, n, path),
        (None, Some(text)) => {
            let name = destination
                .as_deref()
                .and_then(|d| std::path::Path::new(d).file_name())
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| "inline".into());
            templates.convert(ctx, Source::Inline { text, name: &name }, &opts, n, path)
        }
        (Some(_), Some(_)) => {
            ctx.unmapped(
                n,
                path,
                "has both source and contents; consul-template refuses that too",
            );
            Err("both source and contents".into())
        }
        (None, None) => {
            ctx.unmapped(n, path, "has no source or contents");
            Err("no source".into())
        }
    };
    match converted {
        Ok(rel) => out.source = rel,
        Err(why) => {
            out.source = source.unwrap_or_default();
            out.disabled = Some(why);
        }
    }
    if destination.is_none() {
        ctx.unmapped(n, path, "has no destination: consul-template printed it to stdout; give it a file (`rewire diff` shows output without writing)");
        out.disabled.get_or_insert_with(|| "no destination".into());
    } else if destination.as_deref().is_some_and(|d| !d.starts_with('/')) {
        let at = t.get("destination").unwrap_or(n);
        ctx.note(at, &t.child("destination"), "a relative destination is relative to rewire.toml's directory in rewire, not to the working directory");
    }
    out.perms = perms(ctx, &t);
    let timeout = ctx.duration(&t, "command_timeout");
    if let Some(c) = t.get("command") {
        out.reload = command(ctx, c, &t.child("command"), true).map(|command| {
            Reload::Run(Run {
                command,
                timeout: timeout.clone(),
            })
        });
    }
    if let Some(e) = t.get("exec").and_then(|e| Obj::new(e, &t.child("exec"))) {
        if let Some(c) = e.get("command") {
            out.reload = command(ctx, c, &e.child("command"), true).map(|command| {
                Reload::Run(Run {
                    command,
                    timeout: None,
                })
            });
        }
        let t2 = ctx.duration(&e, "timeout");
        if let (Some(Reload::Run(r)), Some(t2)) = (&mut out.reload, t2) {
            r.timeout = Some(t2);
        }
        ctx.rest(&e, "not a template exec setting rewire knows");
    }
    match (&out.reload, exec_reload) {
        (None, _) => out.reload = exec_reload.clone(),
        (Some(_), Some(Reload::SignalMain(signal))) => {
            let at = t.get("command").unwrap_or(n);
            ctx.unmapped(
                at,
                &t.child("command"),
                format!(
                    "consul-template also sent the exec child {signal} after this template's \
                     command; a rewire template has one reload, so only the command runs: \
                     signal the app from the command, or drop the command and use \
                     reload = {{ signal = \"{signal}\", target = \"main\" }}"
                ),
            );
        }
        _ => {}
    }
    if let Some(n) = t.get("create_dest_dirs")
        && n.value == Value::Bool(false)
    {
        ctx.note(
            n,
            &t.child("create_dest_dirs"),
            "rewire always creates the destination's directory",
        );
    }
    if let Some(n) = t.get("error_fatal") {
        ctx.note(n, &t.child("error_fatal"), "rewire keeps running when a template fails (the old file stays); `rewire render` exits 1");
    }
    for key in ["user", "group", "uid", "gid"] {
        if let Some(n) = t.get(key) {
            ctx.unmapped(n, &t.child(key), "rewire keeps the existing file's owner (new files belong to rewire's user); chown the file once");
        }
    }
    for key in ["sandbox_path", "function_denylist", "function_blacklist"] {
        if let Some(n) = t.get(key) {
            ctx.unmapped(
                n,
                &t.child(key),
                "not supported: rewire templates cannot read files or run commands anyway",
            );
        }
    }
    ctx.rest(&t, "not a template option rewire knows");
    plan.templates.push(out);
}

fn perms(ctx: &mut Ctx, t: &Obj) -> Option<String> {
    let n = t.get("perms")?;
    let mode = match &n.value {
        // HCL1 read `0644` as octal; a number without the leading 0 is decimal.
        Value::Num(s) if s.starts_with('0') && s.len() > 1 => u32::from_str_radix(s, 8).ok(),
        Value::Num(s) => s.parse::<u32>().ok(),
        Value::Str(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8).ok(),
        _ => None,
    };
    match mode {
        Some(m) if m <= 0o7777 => Some(format!("{m:04o}")),
        _ => {
            ctx.unmapped(n, &t.child("perms"), "not a file mode");
            None
        }
    }
}

/// consul-template as called from a command line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cli {
    pub once: bool,
    /// `src`, `dst` and the optional command of each `-template`.
    pub templates: Vec<(String, Option<String>, Option<String>)>,
    pub consul: Option<String>,
    pub token: Option<String>,
    pub max_stale: bool,
    pub wait: Option<String>,
    /// Flags with no mapping, as written.
    pub unmapped: Vec<String>,
}

/// Reads a consul-template command line; `None` when argv does not run consul-template.
pub fn parse_cli(argv: &[String]) -> Option<Cli> {
    let program = argv.first()?;
    if std::path::Path::new(program)
        .file_name()
        .is_none_or(|n| n != "consul-template")
    {
        return None;
    }
    let mut cli = Cli::default();
    let mut i = 1;
    while i < argv.len() {
        let arg = argv[i].trim_start_matches('-');
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (arg, None),
        };
        // Go's flag package: every flag but a boolean one takes the next word as its value,
        // and consul-template has no positional arguments. An unknown flag followed by
        // another flag is taken for a boolean.
        let boolean = matches!(
            flag,
            "once"
                | "dry"
                | "version"
                | "v"
                | "h"
                | "help"
                | "syslog"
                | "dedup"
                | "consul-ssl"
                | "consul-ssl-verify"
                | "consul-retry"
                | "vault-ssl"
                | "vault-ssl-verify"
                | "vault-renew-token"
                | "vault-retry"
                | "vault-unwrap-token"
                | "template-error-fatal"
        );
        let takes_value = !boolean && argv.get(i + 1).is_some_and(|next| !next.starts_with('-'));
        let value = if takes_value && inline.is_none() {
            i += 1;
            argv.get(i).cloned()
        } else {
            inline
        };
        match (flag, value) {
            ("once", _) => cli.once = true,
            ("template", Some(v)) => cli.templates.push(split_template(&v)),
            ("consul" | "consul-addr", Some(v)) => cli.consul = Some(v),
            ("consul-token", Some(v)) => cli.token = Some(v),
            ("max-stale", Some(v)) => cli.max_stale = v != "0" && v != "0s",
            ("wait", Some(v)) => cli.wait = Some(v),
            (f, v) => cli.unmapped.push(match v {
                Some(v) => format!("-{f} {v}"),
                None => format!("-{f}"),
            }),
        }
        i += 1;
    }
    Some(cli)
}

/// `src:dst:command`: consul-template splits on `:` and joins everything after the second
/// part back into the command.
fn split_template(s: &str) -> (String, Option<String>, Option<String>) {
    let parts: Vec<&str> = s.split(':').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        [] => (String::new(), None, None),
        [src] => (src.to_string(), None, None),
        [src, dst] => (src.to_string(), Some(dst.to_string()), None),
        [src, dst, rest @ ..] => (src.to_string(), Some(dst.to_string()), Some(rest.join(":"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        argv::split(s).unwrap().argv
    }

    #[test]
    fn command_line_templates_and_flags() {
        let cli = parse_cli(&words(
            "/usr/local/bin/consul-template -once -consul=consul:8500 -wait 2s:10s -template \"/a.ctmpl:/etc/a.conf:nginx -s reload; echo a:b\" -template /b.ctmpl -dedup",
        ))
        .unwrap();
        assert!(cli.once);
        assert_eq!(cli.consul.as_deref(), Some("consul:8500"));
        assert_eq!(cli.wait.as_deref(), Some("2s:10s"));
        assert_eq!(
            cli.templates,
            vec![
                (
                    "/a.ctmpl".into(),
                    Some("/etc/a.conf".into()),
                    Some("nginx -s reload; echo a:b".into())
                ),
                ("/b.ctmpl".into(), None, None)
            ]
        );
        assert_eq!(cli.unmapped, vec!["-dedup"]);
        assert!(parse_cli(&words("nginx -s reload")).is_none());
    }

    #[test]
    fn flags_it_does_not_know_keep_their_values() {
        let cli = parse_cli(&words(
            "consul-template -vault-addr https://vault:8200 -vault-renew-token -exec-kill-signal SIGQUIT -unknown-bool -once",
        ))
        .unwrap();
        assert_eq!(
            cli.unmapped,
            vec![
                "-vault-addr https://vault:8200",
                "-vault-renew-token",
                "-exec-kill-signal SIGQUIT",
                "-unknown-bool"
            ]
        );
        assert!(cli.once);
    }
}
