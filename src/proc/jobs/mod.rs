//! Jobs: `[[job]]`s and `[main]` as one graph of supervised processes, ordered by events
//! (ContainerPilot 3's model).
//!
//! Every job publishes what happens to it on the [`bus`]: `started`, `healthy`, `unhealthy`
//! (its health command changed result), `exited`, `succeeded`, `failed`, `stopping`,
//! `stopped`. A job with `when = { after = "NAME", is = "EVENT" }` starts on the first such
//! event of NAME (`each = true`: on every one, one run at a time); without `when` it starts at
//! once. `[main]` is the node named `main`: its `when` gates `pre_start` and the process, and
//! its `started`/`exited`/... events gate others. A `[[task]]` or `[[watch]]` with a `when`
//! begins only once the event happened. The config refuses a `when` that can never fire (an
//! unknown name, a cycle, `healthy` of a job without a health command).
//!
//! Start: [`Jobs::start`] runs before the catalog preflight, so a job the catalog needs (a
//! Consul agent inside the container) is not held back by it; templates and registrations
//! still wait for the preflight.
//!
//! Stop ([`Jobs::stop`], after deregistration and drain): the graph in reverse, dependents
//! first: a job stops only once every job that waits for one of its events has stopped (the
//! app before its Consul agent). Independent branches stop at the same time. Each job gets
//! `stopping`, its own `stop_signal`, SIGKILL to its group after its own `stop_timeout`, then
//! `stopped`. A job that waits for another's `stopping` or `stopped` is a stop hook: it runs
//! during the stop (never before): the job it waits for is signalled only once a `stopping`
//! hook's run ended, and a `stopped` hook's run may finish before the hook's own turn; both
//! bounded by the hook's `stop_timeout`. A job waiting for main's end (`exited`, `succeeded`,
//! `failed`) is one too when main ended on its own, which is what began the stop: it still
//! starts, and the stop lets its run finish.
//!
//! Bound: a job's turn takes at most its `stop_timeout` + 5 s (the kill grace), plus its
//! `stopping` hooks' `stop_timeout`s; turns along a chain add up, branches overlap. So the
//! stop takes at most the sum of those along the longest dependency chain (plus deregistration
//! and drain before it); a second stop signal kills every group at once.

pub mod bus;
pub(super) mod restarts;
mod run;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

pub use self::bus::Bus;
pub use self::restarts::STABLE_RUN;
use self::run::{JobTask, KILL_GRACE};
use crate::config::{Config, Event, JobConfig, MAIN_JOB, When};

/// How `[main]`'s turn in the stop sequence is run (the supervisor's pre_stop, stop, post_stop).
pub type MainTurn<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// The running jobs.
pub struct Jobs {
    bus: Bus,
    halt: CancellationToken,
    hurry: CancellationToken,
    jobs: Vec<Running>,
    /// `[main]`'s `when`, when there is a `[main]` (it is a node of the graph).
    main: Option<Option<When>>,
}

struct Running {
    cfg: JobConfig,
    turn: CancellationToken,
    task: JoinHandle<()>,
}

impl Jobs {
    /// Starts every `[[job]]` (each waits for its `when` first). `main` appears on the bus as
    /// a node; the supervisor drives it.
    pub fn start(
        config: &Config,
        env: BTreeMap<String, String>,
        health: crate::proc::health::Registry,
    ) -> Jobs {
        let mut names: Vec<&str> = config.jobs.iter().map(|j| j.name.as_str()).collect();
        if config.main.is_some() {
            names.push(MAIN_JOB);
        }
        let bus = Bus::new(names);
        for j in config.jobs.iter().filter(|j| j.health.is_some()) {
            bus.update(&j.name, |s| s.checked = true);
        }
        let halt = CancellationToken::new();
        let hurry = CancellationToken::new();
        let jobs = config
            .jobs
            .iter()
            .map(|cfg| {
                let turn = CancellationToken::new();
                let task = tokio::spawn(
                    JobTask {
                        cfg: cfg.clone(),
                        bus: bus.clone(),
                        env: env.clone(),
                        halt: halt.clone(),
                        turn: turn.clone(),
                        hurry: hurry.clone(),
                        health: health.clone(),
                        last_pid: Default::default(),
                    }
                    .run()
                    .instrument(info_span!("job", job = %cfg.name)),
                );
                Running {
                    cfg: cfg.clone(),
                    turn,
                    task,
                }
            })
            .collect();
        Jobs {
            bus,
            halt,
            hurry,
            jobs,
            main: config.main.as_ref().map(|m| m.when.clone()),
        }
    }

    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Cancelled by a second stop signal (see [`Jobs::hurry`]).
    pub fn hurry_token(&self) -> CancellationToken {
        self.hurry.clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<std::sync::Arc<crate::status::Jobs>> {
        self.bus.subscribe()
    }

    pub fn configs(&self) -> Vec<JobConfig> {
        self.jobs.iter().map(|j| j.cfg.clone()).collect()
    }

    /// From now on no job starts (but stop hooks) and none restarts.
    pub fn halt(&self) {
        self.halt.cancel();
    }

    /// A second stop signal: every turn kills its process group at once.
    pub fn hurry(&self) {
        self.hurry.cancel();
    }

    /// Stops every job, the graph in reverse (see the module docs). `main_turn` stops
    /// `[main]` at its place in the order.
    pub async fn stop(mut self, main_turn: Option<MainTurn<'_>>) {
        self.halt.cancel();
        let mut nodes: Vec<(String, Option<When>)> = self
            .jobs
            .iter()
            .map(|j| (j.cfg.name.clone(), j.cfg.when.clone()))
            .collect();
        if let Some(w) = &self.main {
            nodes.push((MAIN_JOB.to_string(), w.clone()));
        }
        let order = Order::new(&nodes);
        let (done_tx, done_rx): (BTreeMap<_, _>, BTreeMap<_, _>) = nodes
            .iter()
            .map(|(n, _)| {
                let (tx, rx) = watch::channel(false);
                ((n.clone(), tx), (n.clone(), rx))
            })
            .unzip();
        let stop_timeouts: BTreeMap<String, Duration> = self
            .jobs
            .iter()
            .map(|j| (j.cfg.name.clone(), j.cfg.stop_timeout))
            .collect();
        let mut main_turn = main_turn;
        let mut turns: Vec<Pin<Box<dyn Future<Output = ()> + Send + '_>>> = Vec::new();
        for (name, _) in &nodes {
            let before: Vec<watch::Receiver<bool>> = order.before[name]
                .iter()
                .map(|n| done_rx[n].clone())
                .collect();
            let hooks: Vec<(String, Duration)> = order.stopping_hooks[name]
                .iter()
                .map(|h| (h.clone(), stop_timeouts.get(h).copied().unwrap_or_default()))
                .collect();
            let done = done_tx[name].clone();
            let bus = self.bus.clone();
            let hurry = self.hurry.clone();
            let job = if name == MAIN_JOB {
                Turn::Main(main_turn.take())
            } else {
                let pos = self
                    .jobs
                    .iter()
                    .position(|j| j.cfg.name == *name)
                    .expect("every node but main is a job");
                let r = self.jobs.swap_remove(pos);
                Turn::Job(r)
            };
            let name = name.clone();
            turns.push(Box::pin(async move {
                for mut rx in before {
                    let _ = rx.wait_for(|d| *d).await;
                }
                bus.update(&name, |s| s.state = "stopping".into());
                bus.emit(&name, Event::Stopping);
                for (hook, grace) in hooks {
                    wait_for_hook(&bus, &hook, grace + KILL_GRACE, &hurry).await;
                }
                match job {
                    Turn::Main(Some(turn)) => turn.await,
                    Turn::Main(None) => {}
                    Turn::Job(r) => {
                        // A stop hook's event has happened (it stops after the job it
                        // hooks), or main's end that a job waits for (main ended on its own
                        // and so began the stop): let its run finish, for up to its
                        // stop_timeout.
                        let hooked = r.cfg.when.as_ref().is_some_and(|w| {
                            w.is.is_stop() || (w.on_main_exit() && bus.count(MAIN_JOB, w.is) > 0)
                        });
                        if hooked {
                            wait_for_hook(&bus, &name, r.cfg.stop_timeout, &hurry).await;
                        }
                        r.turn.cancel();
                        let bound = r.cfg.stop_timeout + KILL_GRACE + KILL_GRACE;
                        let mut task = r.task;
                        if tokio::time::timeout(bound, &mut task).await.is_err() {
                            warn!(job = %name, "the job's task did not finish; aborting it");
                            task.abort();
                        }
                    }
                }
                bus.update(&name, |s| {
                    s.state = "stopped".into();
                    s.pid = None;
                    s.waits_for = None;
                });
                bus.emit(&name, Event::Stopped);
                info!(job = %name, "stopped");
                done.send_replace(true);
            }));
        }
        join_all(turns).await;
    }
}

enum Turn<'a> {
    Main(Option<MainTurn<'a>>),
    Job(Running),
}

/// Waits until a stop hook, started by a `stopping` or `stopped` event, has run (bounded).
async fn wait_for_hook(bus: &Bus, hook: &str, bound: Duration, hurry: &CancellationToken) {
    let mut rx = bus.subscribe();
    let ran = |jobs: &crate::status::Jobs| {
        jobs.get(hook).is_some_and(|s| {
            s.count(Event::Failed.as_str()) > 0
                || (s.count(Event::Started.as_str()) > 0 && s.pid.is_none())
        })
    };
    tokio::select! {
        r = tokio::time::timeout(bound, rx.wait_for(|j| ran(j))) => if r.is_err() {
            warn!(hook, "stop hook still running; going on");
        },
        // A second stop signal: nobody waits for hooks any more (the hook itself is
        // stopped at its own turn, at once).
        _ = hurry.cancelled() => {}
    }
}

/// The stop order of the graph: for each node, the nodes that must have stopped before it
/// (those waiting for it, but stop hooks, which wait the other way round), and its
/// `stopping` hooks.
struct Order {
    before: BTreeMap<String, BTreeSet<String>>,
    stopping_hooks: BTreeMap<String, BTreeSet<String>>,
}

impl Order {
    fn new(nodes: &[(String, Option<When>)]) -> Order {
        let mut before: BTreeMap<String, BTreeSet<String>> = nodes
            .iter()
            .map(|(n, _)| (n.clone(), BTreeSet::new()))
            .collect();
        let mut stopping_hooks = before.clone();
        for (name, when) in nodes {
            let Some(w) = when else { continue };
            if !before.contains_key(&w.after) {
                continue;
            }
            if w.is.is_stop() {
                // A stop hook stops after the job it hooks.
                before
                    .entry(name.clone())
                    .or_default()
                    .insert(w.after.clone());
                if w.is == Event::Stopping {
                    stopping_hooks
                        .entry(w.after.clone())
                        .or_default()
                        .insert(name.clone());
                }
            } else {
                // Dependents first.
                before
                    .entry(w.after.clone())
                    .or_default()
                    .insert(name.clone());
            }
        }
        Order {
            before,
            stopping_hooks,
        }
    }
}

/// The longest time the jobs' stop can take: the sum of the turns along the longest chain
/// (see the module docs).
pub fn shutdown_bound(config: &Config) -> Duration {
    let main_turn = config
        .main
        .as_ref()
        .map(|m| {
            m.stop_timeout
                + KILL_GRACE
                + m.pre_stop.as_ref().map(|h| h.timeout).unwrap_or_default()
                + m.post_stop.as_ref().map(|h| h.timeout).unwrap_or_default()
        })
        .unwrap_or_default();
    let turn = |name: &str| -> Duration {
        if name == MAIN_JOB {
            main_turn
        } else {
            config
                .jobs
                .iter()
                .find(|j| j.name == name)
                .map(|j| {
                    // A stop hook may first finish its run (see `Jobs::stop`).
                    let hook = j.when.as_ref().is_some_and(|w| w.is.is_stop());
                    j.stop_timeout * if hook { 2 } else { 1 } + KILL_GRACE
                })
                .unwrap_or_default()
        }
    };
    let mut nodes: Vec<(String, Option<When>)> = config
        .jobs
        .iter()
        .map(|j| (j.name.clone(), j.when.clone()))
        .collect();
    if let Some(m) = &config.main {
        nodes.push((MAIN_JOB.to_string(), m.when.clone()));
    }
    let order = Order::new(&nodes);
    // Longest path ending at each node (the graph is acyclic: the config checked it).
    fn finish(
        n: &str,
        order: &Order,
        turn: &dyn Fn(&str) -> Duration,
        memo: &mut BTreeMap<String, Duration>,
    ) -> Duration {
        if let Some(d) = memo.get(n) {
            return *d;
        }
        let hooks: Duration = order.stopping_hooks[n].iter().map(|h| turn(h)).sum();
        let start = order.before[n]
            .iter()
            .map(|b| finish(b, order, turn, memo))
            .max()
            .unwrap_or_default();
        let d = start + hooks + turn(n);
        memo.insert(n.to_string(), d);
        d
    }
    let mut memo = BTreeMap::new();
    nodes
        .iter()
        .map(|(n, _)| finish(n, &order, &turn, &mut memo))
        .max()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, after: Option<(&str, Event)>) -> (String, Option<When>) {
        (
            name.to_string(),
            after.map(|(a, is)| When {
                after: a.to_string(),
                is,
                timeout: None,
            }),
        )
    }

    #[test]
    fn dependents_stop_before_what_they_depend_on_and_hooks_after() {
        let nodes = [
            node("agent", None),
            node("main", Some(("agent", Event::Healthy))),
            node("sidecar", Some(("main", Event::Started))),
            node("notify", Some(("main", Event::Stopping))),
        ];
        let o = Order::new(&nodes);
        assert_eq!(
            o.before["agent"],
            BTreeSet::from(["main".to_string()]),
            "the agent waits for main to stop"
        );
        assert_eq!(o.before["main"], BTreeSet::from(["sidecar".to_string()]));
        assert_eq!(o.before["notify"], BTreeSet::from(["main".to_string()]));
        assert_eq!(
            o.stopping_hooks["main"],
            BTreeSet::from(["notify".to_string()])
        );
    }

    #[test]
    fn the_shutdown_bound_adds_up_along_the_longest_chain_only() {
        let text = r#"
[[job]]
name = "agent"
exec = ["agent"]
stop_timeout = "10s"

[[job]]
name = "side"
exec = ["side"]
stop_timeout = "100s"

[[job]]
name = "app"
exec = ["app"]
stop_timeout = "20s"
when = { after = "agent", is = "started" }
"#;
        let c = crate::config::parse_str(text, std::path::Path::new("/x/rewire.toml"), &|_| None)
            .unwrap();
        // agent after app: 20 + 5 + 10 + 5 = 40 s; side alone: 105 s, in parallel.
        assert_eq!(shutdown_bound(&c), Duration::from_secs(105));
        let text = text.replace("\"100s\"", "\"1s\"");
        let c = crate::config::parse_str(&text, std::path::Path::new("/x/rewire.toml"), &|_| None)
            .unwrap();
        assert_eq!(shutdown_bound(&c), Duration::from_secs(40));
    }
}
