//! Commands and hooks: ContainerPilot strings split into argv, and `consul-template -once`
//! invocations recognised so they become `[[template]]` blocks.

use super::*;

/// A ContainerPilot command: a string split into words, or an array.
pub(super) fn command(ctx: &mut Ctx, n: &Node, path: &str) -> Option<Vec<String>> {
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
/// `timeout` is the job's own (an onChange job's limit), kept on the reload it becomes.
#[allow(clippy::too_many_arguments)]
pub(super) fn consul_template_call(
    ctx: &mut Ctx,
    cli: &Cli,
    n: &Node,
    path: &str,
    timeout: Option<String>,
    templates: &mut Templates,
    plan: &mut Plan,
) {
    for flag in &cli.unmapped {
        let hint = if flag.starts_with("-config") {
            ": import that file with `rewire import consul-template`"
        } else if flag.starts_with("-vault") {
            ": rewire does not read Vault, and will not"
        } else {
            ""
        };
        ctx.unmapped(
            n,
            path,
            format!("consul-template flag {flag} has no rewire equivalent{hint}"),
        );
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
        let reload = cmd.as_ref().map(|c| {
            Reload::Run(Run {
                timeout: timeout.clone(),
                ..Run::new(Command::Shell(c.clone()))
            })
        });
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
pub(super) fn hook(
    ctx: &mut Ctx,
    n: &Node,
    path: &str,
    templates: &mut Templates,
    plan: &mut Plan,
) -> Option<Command> {
    let argv = command(ctx, n, path)?;
    if let Some(cli) = consul_template::parse_cli(&argv) {
        consul_template_call(ctx, &cli, n, path, None, templates, plan);
        ctx.note(
            n,
            path,
            "consul-template -once became [[template]]s rendered by `rewire render`",
        );
        return Some(Command::Argv(vec!["rewire".into(), "render".into()]));
    }
    Some(Command::Argv(argv))
}
