//! ContainerPilot v3: `jobs` sorted by what they do (see the parent module), and `watches`.

use super::*;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum When {
    Startup,
    Interval(String),
    Event {
        source: String,
        event: String,
        once: bool,
    },
    Invalid,
}

pub(super) struct Job<'a> {
    name: String,
    node: &'a Node,
    obj: Obj<'a>,
    path: String,
    when: When,
    /// `when.timeout`.
    timeout: Option<String>,
}

pub(super) fn v3(ctx: &mut Ctx, top: &Obj, templates: &mut Templates, plan: &mut Plan) {
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
    let depends_on_setup = |i: &usize| match &jobs[*i].when {
        When::Event { source, .. } => setup.contains(source),
        _ => false,
    };
    let has_port = |i: &usize| jobs[*i].obj.has("port");
    // The app: a service (it has a port) started after something (the agent's health, a
    // preStart); else whatever waits for another long-running job; else a service; else the
    // first. Not simply the first that waits for another candidate: a one-shot job waiting
    // for the app's own `healthy` (an announcer) would then be taken for the app.
    let first = |rule: &dyn Fn(&usize) -> bool| candidates.iter().copied().find(|i| rule(i));
    let main_idx = first(&|i| has_port(i) && (depends_on_candidate(i) || depends_on_setup(i)))
        .or_else(|| first(&depends_on_candidate))
        .or_else(|| first(&has_port))
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
            to_job(ctx, job, main_name.as_deref(), templates, plan);
        } else if Some(i) == main_idx {
            main_job(ctx, job, &jobs, plan);
        } else if setup.contains(&job.name) {
            let user = jobs.iter().find(|u| matches!(&u.when, When::Event { source, event, .. } if source == &job.name && event == "exitSuccess"));
            if main_name.is_some()
                && user.map(|u| &u.name) == main_name.as_ref()
                && job.when != When::Startup
            {
                // The autopilotpattern layout: preStart waits for the Consul agent's health.
                // rewire's pre_start runs at once, so it stays a job with its `when`, and
                // [main] waits for its "succeeded" (main_job kept that `when`).
                to_job(ctx, job, main_name.as_deref(), templates, plan);
            } else if main_name.is_some() && user.map(|u| &u.name) == main_name.as_ref() {
                if let Some(e) = j.get("exec") {
                    plan.main.pre_start = hook(ctx, e, &j.child("exec"), templates, plan);
                }
                mark_timing(ctx, job);
            } else {
                unsupported_job(ctx, job, main_name.as_deref());
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
                        consul_template_call(ctx, &cli, e, &j.child("exec"), None, templates, plan);
                        ctx.note(e, &j.child("exec"), "a long-running consul-template job: rewire's daemon renders these templates itself");
                    }
                    mark_timing(ctx, job);
                }
                _ => unsupported_job(ctx, job, main_name.as_deref()),
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
pub(super) fn when(ctx: &mut Ctx, j: &Obj) -> (When, Option<String>) {
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
pub(super) fn mark_timing(ctx: &mut Ctx, job: &Job) {
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
pub(super) fn to_job(
    ctx: &mut Ctx,
    job: &Job,
    main_name: Option<&str>,
    templates: &mut Templates,
    plan: &mut Plan,
) {
    let j = &job.obj;
    let mut out = PlanJob {
        name: job.name.clone(),
        origin: format!("from {}: {}", ctx.file.display(), job.path),
        ..PlanJob::default()
    };
    if let Some(e) = j.get("exec") {
        // A consul-template call (the autopilotpattern preStart waiting for the agent's
        // health) becomes templates and `rewire render`, as a pre_start does: the image has
        // no consul-template any more.
        out.exec = hook(ctx, e, &j.child("exec"), templates, plan);
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
pub(super) fn restarts(ctx: &mut Ctx, j: &Obj) -> (Option<&'static str>, Option<u32>) {
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

pub(super) fn unsupported_job(ctx: &mut Ctx, job: &Job, main: Option<&str>) {
    let j = &job.obj;
    let why = match &job.when {
        When::Event { source, event, .. }
            if Some(source.as_str()) == main
                && matches!(event.as_str(), "healthy" | "unhealthy") =>
        {
            format!(
                "job {:?} runs on {source:?} {event}: not mapped ({source:?} became [main], and \
                 rewire's [main] has no health events: its [[service]]'s check registers it but \
                 starts no job; wait for `after = \"main\", is = \"started\"` instead, with a \
                 health check of the job's own if it must wait for the app to answer)",
                job.name
            )
        }
        when => {
            let what = match when {
                When::Startup => "runs beside the app".to_string(),
                When::Event { source, event, .. } => format!("runs on {source:?} {event}"),
                When::Interval(_) => "runs periodically".to_string(),
                When::Invalid => "has a `when` rewire cannot read".to_string(),
            };
            format!(
                "job {:?} {what}: not mapped (a [[job]] needs a name, and its `when` an event of another job: healthy, unhealthy, exitSuccess, exitFailed, stopping, stopped)",
                job.name
            )
        }
    };
    ctx.unmapped(job.node, &job.path, why);
    // One finding for the whole job: its fields go with it.
    for (k, _) in j.unused() {
        let _ = j.get(k);
    }
}

pub(super) fn health(ctx: &mut Ctx, j: &Obj, svc: &mut Service) {
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

pub(super) fn main_job(ctx: &mut Ctx, job: &Job, jobs: &[Job], plan: &mut Plan) {
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
    (plan.main.restart, plan.main.restart_limit) = restarts(ctx, j);
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
pub(super) fn event_word(event: &str) -> Option<&'static str> {
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
