//! ContainerPilot v2: `preStart`/`preStop`/`postStop`, `services`, `backends` with
//! `onChange`, and `tasks`.

use super::*;

pub(super) fn v2(ctx: &mut Ctx, top: &Obj, templates: &mut Templates, plan: &mut Plan) {
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
    // Co-processes run beside the app, restarted as `restarts` says: rewire's [[job]]s.
    for (i, n) in top.all("coprocesses").into_iter().enumerate() {
        let path = format!("coprocesses[{i}]");
        let Some(c) = Obj::new(n, &path) else {
            ctx.unmapped(n, &path, "expected an object");
            continue;
        };
        let name = ctx
            .string(&c, "name")
            .unwrap_or_else(|| format!("coprocess-{}", i + 1));
        let exec = c
            .get("command")
            .and_then(|e| command(ctx, e, &c.child("command")));
        let (restart, restart_limit) = super::v3::restarts(ctx, &c);
        ctx.rest(&c, "not a co-process setting rewire knows");
        match exec {
            Some(exec) => plan.jobs.push(PlanJob {
                name,
                exec: Some(Command::Argv(exec)),
                restart,
                restart_limit,
                origin: format!("from {}: {path}", ctx.file.display()),
                ..PlanJob::default()
            }),
            None => ctx.unmapped(n, &path, "a co-process needs a command"),
        }
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
    // The app itself is not in the file: v2 ran what followed it on its own command line
    // (the container's CMD). Without it the imported config starts no app, so this needs a
    // person (exit 1), not a note.
    let n = [
        "preStart", "preStop", "postStop", "services", "backends", "consul",
    ]
    .into_iter()
    .find_map(|k| top.get(k));
    if let Some(n) = n {
        ctx.unmapped(n, "", "ContainerPilot v2 ran the app given on its own command line (the container's CMD), which is not in this file: add it as [main] exec = [...]");
    }
}

pub(super) fn service_v2(ctx: &mut Ctx, n: &Node, path: &str) -> Option<Service> {
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

pub(super) fn backend(
    ctx: &mut Ctx,
    n: &Node,
    path: &str,
    templates: &mut Templates,
    plan: &mut Plan,
) {
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
