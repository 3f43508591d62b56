//! What a v2 backend or a v3 watch follows, and what runs when it changes: a
//! `consul-template -once` becomes templates, anything else a `[[watch]]`.

use super::*;

/// The service a v2 backend or a v3 watch follows: its name and tag. Its poll interval and
/// datacenter are reported.
pub(super) fn watched(ctx: &mut Ctx, o: &Obj, poll: &str) -> (String, Option<String>) {
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
pub(super) fn on_change(
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
        consul_template_call(ctx, &cli, c, path, timeout, templates, plan);
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
