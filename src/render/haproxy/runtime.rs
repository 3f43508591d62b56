//! One template's HAProxy, as rewire knows it: the config HAProxy runs, the servers on their
//! way out, and the Runtime API commands that move it to a new file.
//!
//! `loaded` is the config HAProxy runs as far as rewire can tell: the file of the last
//! confirmed reload, moved along by every runtime update. It starts unknown: at start (and
//! after anything that leaves it in doubt) the file on disk counts as loaded only once
//! HAProxy agrees with it (`show servers state`, see [`state`](super::state)); until then
//! every change reloads.
//!
//! An added server with health checks is not trusted at once: it starts draining (no new
//! requests), and becomes ready once HAProxy's first check of it finished (`starting`,
//! polled every 100 ms). A passed check makes it take traffic at once; a failed one leaves it
//! down until it passes `rise` checks. Without checks it is ready at once.
//!
//! A removed server goes to maintenance at once (no new requests) and is deleted when no
//! connection is attached any more: HAProxy keeps pooled idle connections to it for
//! `pool-purge-delay` (5 s by default) and requests in flight finish. Until then it is
//! `leaving`, retried with a growing pause; a server of that name that comes back is made
//! ready again instead of added (through `health down`, so again only after passing checks).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::cfg::HaproxyConfig;
use super::plan::{self, Change, Plan, Target};
use super::socket::{Cli, CliError, Deleted};
use super::state::{self, Comparison};

/// The first HAProxy whose Runtime API this module was measured against.
const OLDEST: (u32, u32) = (2, 6);
/// `del server` is tried again after this, doubling up to [`DELETE_RETRY_MAX`].
const DELETE_RETRY_FIRST: Duration = Duration::from_millis(500);
const DELETE_RETRY_MAX: Duration = Duration::from_secs(5);
/// How often a starting server's first check is looked for.
const STARTING_POLL: Duration = Duration::from_millis(100);
/// A first check that never finishes (a long `inter`): made ready anyway after this, and
/// HAProxy's checks take it from there.
const STARTING_LIMIT: Duration = Duration::from_secs(30);

/// A runtime update that did not go through.
#[derive(Debug, thiserror::Error)]
#[error("runtime update {change} failed: {source}")]
pub struct ApplyError {
    pub change: String,
    #[source]
    pub source: CliError,
}

/// What a check of HAProxy against the loaded config found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verified {
    Agrees,
    /// It differed and was put right through the Runtime API.
    Repaired(Vec<String>),
    /// Nothing to check against (not loaded yet), or HAProxy does not answer.
    Unknown(String),
}

/// Whether HAProxy runs a given config.
#[derive(Debug, PartialEq, Eq)]
pub enum Adopted {
    /// It agrees: that config is now the loaded one.
    Yes,
    /// HAProxy does not answer (not running yet, or no admin socket there).
    Unreachable(String),
    /// It runs something else.
    Disagrees(String),
}

/// A server on its way out: the options its line had (None: found in maintenance at start).
type Leaving = BTreeMap<(String, String), Option<Vec<String>>>;

pub struct Runtime {
    cli: Cli,
    loaded: Option<HaproxyConfig>,
    leaving: Leaving,
    /// Added servers waiting for their first health check, with when to give up waiting.
    starting: BTreeMap<(String, String), Instant>,
    /// When to look at the starting servers again.
    poll_at: Option<Instant>,
    retry_at: Option<Instant>,
    retry_pause: Duration,
    /// The worker pid whose version was found good (asked again after a reload).
    supported_pid: Option<u32>,
}

impl Runtime {
    pub fn new(socket: &Path) -> Runtime {
        Runtime {
            cli: Cli::new(socket),
            loaded: None,
            leaving: Leaving::new(),
            starting: BTreeMap::new(),
            poll_at: None,
            retry_at: None,
            retry_pause: DELETE_RETRY_FIRST,
            supported_pid: None,
        }
    }

    pub fn socket(&self) -> &Path {
        self.cli.path()
    }

    /// Whether rewire knows what HAProxy runs.
    pub fn knows_loaded(&self) -> bool {
        self.loaded.is_some()
    }

    /// Servers waiting for `del server`.
    pub fn leaving(&self) -> impl Iterator<Item = String> + '_ {
        self.leaving.keys().map(|(b, s)| format!("{b}/{s}"))
    }

    /// How to go from what HAProxy runs to `new`. When that is unknown, `previous` (what the
    /// file held before this round) counts as loaded if HAProxy agrees with it.
    pub async fn plan(&mut self, previous: Option<&[u8]>, new: &[u8]) -> Plan {
        if self.loaded.is_none() {
            let Some(previous) = previous else {
                return Plan::Reload("the file is new".into());
            };
            match self.adopt(HaproxyConfig::parse(&text(previous))).await {
                Adopted::Yes => {}
                Adopted::Unreachable(why) | Adopted::Disagrees(why) => return Plan::Reload(why),
            }
        }
        if let Err(why) = self.supported().await {
            return Plan::Reload(why);
        }
        let loaded = self.loaded.as_ref().expect("adopted above");
        plan::plan(loaded, &HaproxyConfig::parse(&text(new)))
    }

    /// Takes `cfg` as what HAProxy runs if HAProxy agrees.
    pub async fn adopt(&mut self, cfg: HaproxyConfig) -> Adopted {
        let observed = match self.cli.observe().await {
            Ok(o) => o,
            Err(e) => {
                return Adopted::Unreachable(format!("HAProxy's runtime is not reachable: {e}"));
            }
        };
        let c = state::compare(&cfg, &observed);
        if !c.agrees() {
            return Adopted::Disagrees(format!(
                "HAProxy does not run the file on disk: {}",
                mismatches(&c)
            ));
        }
        self.take_leaving(&c);
        self.loaded = Some(cfg);
        debug!(socket = %self.socket().display(), "HAProxy runs the file on disk");
        Adopted::Yes
    }

    /// [`Runtime::adopt`] for file bytes.
    pub async fn adopt_file(&mut self, file: &[u8]) -> Adopted {
        self.adopt(HaproxyConfig::parse(&text(file))).await
    }

    /// Refuses an HAProxy older than the one measured.
    async fn supported(&mut self) -> Result<(), String> {
        let info = self
            .cli
            .info()
            .await
            .map_err(|e| format!("HAProxy's runtime is not reachable: {e}"))?;
        if info.pid.is_some() && info.pid == self.supported_pid {
            return Ok(());
        }
        match info.version {
            Some(v) if v >= OLDEST => {
                self.supported_pid = info.pid;
                Ok(())
            }
            _ => Err(format!(
                "HAProxy {} is older than {}.{}, whose Runtime API rewire uses",
                if info.version_text.is_empty() {
                    "(unknown version)"
                } else {
                    &info.version_text
                },
                OLDEST.0,
                OLDEST.1
            )),
        }
    }

    /// Applies a plan's changes; `new` is then what HAProxy runs. On failure what HAProxy
    /// runs is unknown (some changes may have gone through): the caller reloads.
    pub async fn apply(&mut self, changes: &[Change], new: &[u8]) -> Result<(), ApplyError> {
        let before = self.loaded.take();
        for c in changes {
            self.apply_one(c, before.as_ref())
                .await
                .map_err(|source| ApplyError {
                    change: c.to_string(),
                    source,
                })?;
        }
        self.loaded = Some(HaproxyConfig::parse(&text(new)));
        Ok(())
    }

    async fn apply_one(
        &mut self,
        change: &Change,
        before: Option<&HaproxyConfig>,
    ) -> Result<(), CliError> {
        match change {
            Change::Add { backend, server } => {
                let key = (backend.clone(), server.name.clone());
                if let Some(options) = self.leaving.get(&key) {
                    // The same server is back before it was deleted.
                    let same = options
                        .as_ref()
                        .is_some_and(|o| plan::without_weight(o) == server.options_but_weight());
                    if !same {
                        return Err(CliError::Refused {
                            command: format!("add server {backend}/{}", server.name),
                            answer:
                                "a server of that name is still on its way out with other options"
                                    .into(),
                        });
                    }
                    return self.ready(backend, server).await;
                }
                self.cli.add_server(backend, server).await?;
                if !server.check {
                    return self.cli.set_state(backend, &server.name, "ready").await;
                }
                self.cli.enable_health(backend, &server.name).await?;
                self.cli.set_state(backend, &server.name, "drain").await?;
                self.starting.insert(key, Instant::now() + STARTING_LIMIT);
                self.poll_at = Some(Instant::now() + STARTING_POLL);
                Ok(())
            }
            Change::Ready { backend, server } => self.ready(backend, server).await,
            Change::Remove { backend, name } => {
                self.cli.set_state(backend, name, "maint").await?;
                let options = before
                    .and_then(|c| c.proxy(backend))
                    .and_then(|p| p.servers.iter().find(|s| &s.name == name))
                    .map(|s| s.options.clone());
                match self.cli.del_server(backend, name).await? {
                    Deleted::Done | Deleted::Gone => {}
                    Deleted::Busy => {
                        debug!(backend = %backend, server = %name, "connections still attached; deleting later");
                        self.leaving
                            .insert((backend.clone(), name.clone()), options);
                        self.schedule_deletions();
                    }
                }
                Ok(())
            }
            Change::Set {
                backend,
                name,
                addr,
                weight,
            } => {
                if let Some(a) = addr {
                    self.cli.set_addr(backend, name, *a).await?;
                }
                if let Some(w) = weight {
                    self.cli.set_weight(backend, name, *w).await?;
                }
                Ok(())
            }
        }
    }

    /// A server HAProxy has, in maintenance: as the line says, then ready.
    async fn ready(&mut self, backend: &str, server: &Target) -> Result<(), CliError> {
        self.cli
            .set_addr(backend, &server.name, server.addr)
            .await?;
        self.cli
            .set_weight(backend, &server.name, server.weight)
            .await?;
        self.make_ready(backend, server).await?;
        self.leaving
            .remove(&(backend.to_string(), server.name.clone()));
        Ok(())
    }

    /// Out of maintenance. With health checks, not optimistically: through drain (no new
    /// requests) to `health down`, so it takes traffic only after its first passing checks
    /// (`rise`); leaving maintenance straight to ready would count it up at once.
    async fn make_ready(&self, backend: &str, server: &Target) -> Result<(), CliError> {
        if server.check {
            self.cli.set_state(backend, &server.name, "drain").await?;
            self.cli.set_health_down(backend, &server.name).await?;
        }
        self.cli.set_state(backend, &server.name, "ready").await
    }

    /// HAProxy re-read the file (a confirmed reload): `file` is what it runs now, and the
    /// servers that were leaving are gone with the old worker.
    pub fn reloaded(&mut self, file: Option<&[u8]>) {
        self.loaded = file.map(|f| HaproxyConfig::parse(&text(f)));
        self.leaving.clear();
        self.starting.clear();
        self.poll_at = None;
        self.retry_at = None;
        self.supported_pid = None;
    }

    /// What HAProxy runs is no longer known (a reload that did not happen or failed).
    pub fn forget(&mut self) {
        self.loaded = None;
        self.leaving.clear();
        self.starting.clear();
        self.retry_at = None;
    }

    /// Checks that HAProxy agrees with the loaded config and repairs what the Runtime API
    /// can; `Err` says why only a reload can.
    pub async fn verify(&mut self) -> Result<Verified, String> {
        let Some(loaded) = self.loaded.clone() else {
            return Ok(Verified::Unknown("not loaded yet".into()));
        };
        let observed = match self.cli.observe().await {
            Ok(o) => o,
            Err(e) => return Ok(Verified::Unknown(e.to_string())),
        };
        let mut c = state::compare(&loaded, &observed);
        self.take_leaving(&c);
        // Draining until their first check: on their way in.
        c.mismatches.retain(|m| !matches!(m, state::Mismatch::NotReady { backend, name } if self.starting.contains_key(&(backend.clone(), name.clone()))));
        if c.agrees() {
            return Ok(Verified::Agrees);
        }
        let found = mismatches(&c);
        warn!(socket = %self.socket().display(), "HAProxy differs from the file: {found}; repairing");
        let changes = match state::repair(&loaded, &c) {
            Plan::Runtime(changes) => changes,
            Plan::Reload(why) => {
                self.forget();
                return Err(why);
            }
        };
        for ch in &changes {
            if let Err(e) = self.apply_one(ch, Some(&loaded)).await {
                self.forget();
                return Err(format!("repairing {ch} failed: {e}"));
            }
        }
        // Confirm the repair took.
        match self.cli.observe().await {
            Ok(o) if state::compare(&loaded, &o).agrees() => Ok(Verified::Repaired(
                changes.iter().map(ToString::to_string).collect(),
            )),
            Ok(o) => {
                self.forget();
                Err(format!(
                    "HAProxy still differs after a repair: {}",
                    mismatches(&state::compare(&loaded, &o))
                ))
            }
            Err(e) => Ok(Verified::Unknown(e.to_string())),
        }
    }

    /// Servers found in maintenance and not in the file are on their way out.
    fn take_leaving(&mut self, c: &Comparison) {
        self.leaving.retain(|k, _| c.leaving.contains(k));
        for k in &c.leaving {
            self.leaving.entry(k.clone()).or_insert(None);
        }
        if self.leaving.is_empty() {
            self.retry_at = None;
        } else if self.retry_at.is_none() {
            self.schedule_deletions();
        }
    }

    fn schedule_deletions(&mut self) {
        if self.retry_at.is_none() {
            self.retry_pause = DELETE_RETRY_FIRST;
        }
        self.retry_at = Some(Instant::now() + self.retry_pause);
    }

    /// When [`Runtime::housekeeping`] should run next.
    pub fn next_due(&self) -> Option<Instant> {
        let deleting = self.retry_at.filter(|_| !self.leaving.is_empty());
        let starting = self.poll_at.filter(|_| !self.starting.is_empty());
        deleting.into_iter().chain(starting).min()
    }

    /// Readies the starting servers whose first check finished, and deletes the leaving ones
    /// whose connections ended, when due.
    pub async fn housekeeping(&mut self) {
        let now = Instant::now();
        if !self.starting.is_empty() && self.poll_at.is_some_and(|at| at <= now) {
            self.ready_checked().await;
            self.poll_at = Some(Instant::now() + STARTING_POLL);
        }
        if self.retry_at.is_some_and(|at| at <= Instant::now()) && !self.leaving.is_empty() {
            self.delete_leaving().await;
        }
    }

    /// Starting servers whose first check finished (or that waited too long) become ready.
    async fn ready_checked(&mut self) {
        let observed = match self.cli.observe().await {
            Ok(o) => o,
            Err(e) => {
                debug!(error = %e, "cannot read HAProxy's servers; trying again");
                return;
            }
        };
        let now = Instant::now();
        for ((backend, name), give_up) in self.starting.clone() {
            let server = observed
                .servers
                .iter()
                .find(|s| s.backend == backend && s.name == name);
            let due = match server {
                None => {
                    self.starting.remove(&(backend, name));
                    continue;
                }
                Some(s) => s.checked() || now >= give_up,
            };
            if !due {
                continue;
            }
            match self.cli.set_state(&backend, &name, "ready").await {
                Ok(()) => {
                    debug!(server = %format!("{backend}/{name}"), "first health check done; ready");
                    self.starting.remove(&(backend, name));
                }
                Err(e) => {
                    warn!(server = %format!("{backend}/{name}"), error = %e, "cannot make a new server ready; trying again")
                }
            }
        }
    }

    /// Tries `del server` on every server on its way out; the busy ones wait longer.
    async fn delete_leaving(&mut self) {
        let mut busy = false;
        for (backend, name) in self.leaving.keys().cloned().collect::<Vec<_>>() {
            match self.cli.del_server(&backend, &name).await {
                Ok(Deleted::Done) => {
                    info!(socket = %self.socket().display(), server = %format!("{backend}/{name}"), "server deleted from HAProxy");
                    self.leaving.remove(&(backend, name));
                }
                Ok(Deleted::Gone) => {
                    self.leaving.remove(&(backend, name));
                }
                Ok(Deleted::Busy) => busy = true,
                Err(e) => {
                    debug!(error = %e, "del server failed; trying again later");
                    busy = true;
                }
            }
        }
        if busy {
            self.retry_pause = (self.retry_pause * 2).min(DELETE_RETRY_MAX);
            self.retry_at = Some(Instant::now() + self.retry_pause);
        } else {
            self.retry_at = None;
        }
    }
}

/// The pid of the worker answering on an admin socket.
pub async fn worker_pid(socket: &Path) -> Option<u32> {
    Cli::new(socket).info().await.ok()?.pid
}

/// Waits until a worker other than `old` answers on the admin socket (a reload finished).
pub async fn new_worker(socket: &Path, old: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if worker_pid(socket).await.is_some_and(|p| p != old) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn mismatches(c: &Comparison) -> String {
    let mut parts: Vec<String> = c
        .mismatches
        .iter()
        .take(5)
        .map(ToString::to_string)
        .collect();
    if c.mismatches.len() > 5 {
        parts.push(format!("{} more", c.mismatches.len() - 5));
    }
    parts.join("; ")
}

fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}
