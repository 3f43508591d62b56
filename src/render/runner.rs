//! The daemon's template loop: debounce → render → check → write → reload, per group.
//!
//! Templates that share a reload form one group and one task: they render together after a
//! change, and the reload runs once for all of them; if it fails, every file the group wrote
//! in that round is put back (nginx is never left half-updated). Groups are independent
//! tasks, so a hanging check or reload in one never delays another.
//!
//! A group wakes only when a query it used in its last render has a new answer (per-entry
//! versions in the snapshot), so a change to `service("db")` does not re-render a template
//! that only reads `service("web")` (consul-template re-runs every template, #1365).
//!
//! Each group tells the [`Wanted`] set which queries its last render used, so
//! the catalog watches exactly those.
//!
//! Nothing is written before `pre_start` has exited: it may be `rewire render` writing the same
//! files, and a runner's rollback must never undo what it wrote.
//!
//! Cancellation: the generation's token (SIGHUP, stop) abandons a render in flight (its thread
//! ends on its own at its deadline, see [`worker`](super::worker)) but lets a write, check and
//! reload in progress finish, so a file in place is never left without its reload. The daemon's
//! token (`Shared::abort`, cancelled by the stop sequence a grace period after the
//! generation's) drops the whole round at once: a check or reload still in flight is killed
//! with its process group.
//!
//! Failures are retried without waiting for new data, backing off (about 1 s doubling to
//! 1 min): bytes a check or reload rejected, a write that failed (disk full, read-only file
//! system, a check program missing), and a reload owed to files kept in place.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::group::{self, Group, Written};
use super::pipeline::{self, Applied, ApplyError, ReloadError, Reloaded};
use super::runtimes::{self, Runtimes};
use super::template::{Engine, Rendered};
use super::worker::Slot;
use crate::backoff::Backoff;
use crate::config::{CheckMode, TemplateConfig};
use crate::debounce::{self, Debounce};
use crate::model::Query;
use crate::status::{Board, TemplateEvent};
use crate::store::{Snapshot, Store};
use crate::telemetry::metrics::{CheckResult, Metrics, ReloadResult, RenderResult};
use crate::timing::{self, stage};
use crate::wanted::Wanted;

/// What every group needs from the daemon.
#[derive(Clone)]
pub struct Shared {
    pub engine: Arc<Engine>,
    pub store: Arc<Store>,
    pub wanted: Wanted,
    pub board: Arc<Board>,
    pub metrics: Arc<Metrics>,
    pub env: BTreeMap<String, String>,
    pub main_pid: watch::Receiver<Option<Pid>>,
    /// False until `pre_start` has exited (or when there is none): nothing is written before.
    pub writes_allowed: watch::Receiver<bool>,
    /// Cancelled when the daemon stops: a round in progress is dropped at once.
    pub abort: CancellationToken,
    /// Rounds with a file in place and its reload not done yet.
    pub in_place: InPlace,
}

/// How many rounds have put a file in place and not finished its reload. The stop sequence
/// waits for none before it aborts the rounds (for a few seconds at most): a reload killed
/// there left the new file unloaded, and a restarted rewire found the same bytes in place and
/// reloaded nothing. A round still rendering or checking has nothing in place and is not
/// waited for.
#[derive(Clone)]
pub struct InPlace(Arc<watch::Sender<usize>>);

impl Default for InPlace {
    fn default() -> InPlace {
        InPlace(Arc::new(watch::channel(0).0))
    }
}

impl InPlace {
    fn enter(&self) -> InPlaceGuard {
        self.0.send_modify(|n| *n += 1);
        InPlaceGuard(self.0.clone())
    }

    /// Returns once no round has a file in place without its reload.
    pub async fn settled(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

/// Held by a round from its first write to its end (dropped with it when it is aborted).
struct InPlaceGuard(Arc<watch::Sender<usize>>);

impl Drop for InPlaceGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// How often a template that waits for data says so again.
const PENDING_LOG_EVERY: Duration = Duration::from_secs(60);

pub async fn run_group(group: Group, shared: Shared, stop: CancellationToken) {
    let span = info_span!("group", templates = %group.name());
    async move {
        if !writes_allowed(shared.writes_allowed.clone(), &stop).await {
            return;
        }
        // Says which queries the last render used; dropped (withdrawing them) when the group ends.
        let owner = shared.wanted.owner();
        let mut snaps = shared.store.subscribe();
        let mut debounce = Debounce::new(group.wait());
        // Query → entry version at the last render (None: no answer yet).
        let mut seen: BTreeMap<Query, Option<u64>> = BTreeMap::new();
        let mut state = GroupState {
            runtimes: Runtimes::new(&group),
            ..GroupState::default()
        };
        let mut render_now = true;
        let mut removals = super::removals::Removals::new(
            group
                .templates
                .iter()
                .map(|t| t.destination.clone())
                .collect(),
        );
        loop {
            if render_now {
                debounce.take();
                let snap = shared.store.snapshot();
                let round = render_round(&group, &shared, &snap, &mut state, &stop);
                seen = tokio::select! {
                    biased;
                    _ = shared.abort.cancelled() => break,
                    seen = round => seen,
                };
                owner.set(seen.keys().cloned().collect());
                // A destination directory the round created can be watched now; a file
                // removed before the watch began is written again at once.
                render_now = removals.watch_dirs();
                if render_now {
                    info!("destination removed; writing it again");
                }
                continue;
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = snaps.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let snap = snaps.borrow_and_update().clone();
                    if touches(&seen, &snap) {
                        timing::mark(stage::RUNNER_WOKEN);
                        debounce.poke();
                        // Discovery (data arriving for queries the last render found missing)
                        // renders at once: nothing was written, so there is nothing to settle.
                        if debounce.is_due() || state.discovering {
                            render_now = true;
                        }
                    }
                }
                _ = debounce::due(&debounce) => render_now = true,
                dest = removals.removed() => {
                    // Deleted by hand: write it again now, not at the next catalog change.
                    if super::removals::missing(&dest) {
                        info!(dest = %dest.display(), "destination removed; writing it again");
                        render_now = true;
                    }
                }
                _ = sleep_until_some(state.next_retry()), if state.next_retry().is_some() => {
                    // Bytes a check, write or reload rejected may pass now.
                    render_now = true;
                }
                _ = sleep_until_some(state.runtimes.next_due()), if state.runtimes.next_due().is_some() => {
                    // Servers added at runtime waiting for their first check, and removed
                    // ones whose connections may be gone by now.
                    state.runtimes.housekeeping().await;
                }
                _ = sleep_until_some(state.owed.as_ref().map(|o| o.at)), if state.owed.is_some() => {
                    tokio::select! {
                        biased;
                        _ = shared.abort.cancelled() => break,
                        () = retry_owed_reload(&group, &shared, &mut state) => {}
                    }
                }
                _ = tokio::time::sleep(state.pending_recheck()), if state.pending_since.is_some() => {
                    // Re-render now and then while waiting, so the "still waiting" log repeats.
                    render_now = true;
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// Waits until writes are allowed (`pre_start` has exited). False when stopped first.
async fn writes_allowed(mut allowed: watch::Receiver<bool>, stop: &CancellationToken) -> bool {
    tokio::select! {
        r = allowed.wait_for(|a| *a) => r.is_ok(),
        _ = stop.cancelled() => false,
    }
}

/// Whether any query the group used has a different answer in `snap`.
fn touches(seen: &BTreeMap<Query, Option<u64>>, snap: &Snapshot) -> bool {
    seen.iter()
        .any(|(q, v)| snap.get(q).map(|e| e.version) != *v)
}

async fn sleep_until_some(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// Bytes a check, write or reload rejected: not tried again before `retry_at`. A reload fails
/// for reasons that pass (the program was restarting) and so can a check (`nginx -t` resolving
/// a name) or a write (a full disk, a read-only mount, a check program not installed yet), so
/// the same bytes are tried again, backing off (about 1 s, doubling, up to 1 min).
/// Except after a `check_mode = "swap"` rejection: retrying would put the rejected file in
/// the real place for the length of every check. Those bytes wait for new data (`None`). New
/// bytes are always tried at once.
struct Rejected {
    hash: [u8; 32],
    retry_at: Option<Instant>,
    backoff: Backoff,
}

const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// A reload still owed to files a failed reload left in place (they had no previous version).
struct Owed {
    /// The templates whose files wait for it.
    templates: BTreeSet<String>,
    at: Instant,
    backoff: Backoff,
}

#[derive(Default)]
struct GroupState {
    /// Per template: bytes a check, write or reload rejected.
    rejected: HashMap<String, Rejected>,
    /// Per template: the last message logged, and when (log once, then every 60 s).
    logged: HashMap<String, (String, Instant)>,
    /// Since when some template of the group has been waiting for data.
    pending_since: Option<Instant>,
    /// The last round found queries without data: render as soon as they arrive.
    discovering: bool,
    /// Per template: where its renders run, and whether one is still running.
    slots: HashMap<String, Slot>,
    /// A reload owed to files kept in place after a failed reload.
    owed: Option<Owed>,
    /// The group's runtime APIs (HAProxy), which may take a change without a reload.
    runtimes: Runtimes,
}

/// Renders one template within its limits (see [`worker`](super::worker)), and says how long
/// it took. None when `stop` fired first: the render is abandoned (its thread ends at its
/// deadline).
async fn render(
    shared: &Shared,
    t: &TemplateConfig,
    snap: &Arc<Snapshot>,
    state: &mut GroupState,
    stop: &CancellationToken,
) -> Option<(Rendered, Duration)> {
    let slot = state.slots.entry(t.name.clone()).or_default();
    let started = std::time::Instant::now();
    tokio::select! {
        r = slot.render(&shared.engine, &t.name, t.limits, snap) => Some((r, started.elapsed())),
        _ = stop.cancelled() => None,
    }
}

/// Discovery normally takes a few milliseconds; only a wait longer than this is worth a warning.
const PENDING_QUIET: Duration = Duration::from_secs(3);

impl GroupState {
    /// Remembers that these templates' files wait for a reload; tried again after a backoff.
    fn owe_reload(&mut self, templates: impl IntoIterator<Item = String>) {
        let owed = self.owed.get_or_insert_with(|| Owed {
            templates: BTreeSet::new(),
            at: Instant::now(),
            backoff: Backoff::new(RETRY_FIRST, RETRY_MAX).expect("constant bounds are valid"),
        });
        owed.templates.extend(templates);
        owed.at = Instant::now() + owed.backoff.next_delay();
    }

    fn owes_reload(&self, template: &str) -> bool {
        self.owed
            .as_ref()
            .is_some_and(|o| o.templates.contains(template))
    }

    fn reject(&mut self, template: &str, hash: [u8; 32], retry: bool) {
        let mut backoff = match self.rejected.remove(template) {
            Some(r) if r.hash == hash => r.backoff,
            _ => Backoff::new(RETRY_FIRST, RETRY_MAX).expect("constant bounds are valid"),
        };
        let retry_at = retry.then(|| Instant::now() + backoff.next_delay());
        self.rejected.insert(
            template.to_string(),
            Rejected {
                hash,
                retry_at,
                backoff,
            },
        );
    }

    /// Whether these bytes were rejected and their retry is not due yet. Hashed only when
    /// something of this template was rejected: the common case costs a map lookup.
    fn held_back(&self, template: &str, bytes: &[u8]) -> bool {
        self.rejected.get(template).is_some_and(|r| {
            r.retry_at.is_none_or(|at| Instant::now() < at) && r.hash == hash(bytes)
        })
    }

    /// The next retry still ahead (a past one has had its render).
    fn next_retry(&self) -> Option<Instant> {
        let now = Instant::now();
        self.rejected
            .values()
            .filter_map(|r| r.retry_at)
            .filter(|at| *at > now)
            .min()
    }

    /// When to render again while waiting, so that the "still waiting" warning is said.
    fn pending_recheck(&self) -> Duration {
        match self.pending_since {
            Some(at) if at.elapsed() < PENDING_QUIET => PENDING_QUIET - at.elapsed(),
            _ => PENDING_LOG_EVERY,
        }
    }

    /// Logs `msg` for `template` unless it was just said.
    fn should_log(&mut self, template: &str, msg: &str) -> bool {
        let now = Instant::now();
        match self.logged.get(template) {
            Some((m, at)) if m == msg && now.duration_since(*at) < PENDING_LOG_EVERY => false,
            _ => {
                self.logged
                    .insert(template.to_string(), (msg.to_string(), now));
                true
            }
        }
    }
}

fn hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Written this round: the file, the bytes, and when the newest catalog answer it shows
/// arrived (where its reaction time starts).
type WrittenFile<'g> = (Written<'g>, String, Option<std::time::Instant>);

/// Reloads the group (restoring `written` if that fails) and tells its runtimes what HAProxy
/// runs now.
async fn reload_group(
    group: &Group,
    shared: &Shared,
    state: &mut GroupState,
    written: &[WrittenFile<'_>],
) -> Result<Reloaded, ReloadError> {
    let main_pid = *shared.main_pid.borrow();
    let result = group::reload_or_restore(
        group.reload.as_ref(),
        written.iter().map(|(w, _, _)| w),
        main_pid,
        &shared.env,
        state.runtimes.confirm_socket(),
    )
    .await;
    state.runtimes.after_reload(&result);
    result
}

/// Renders, applies and reloads every template of the group once. Returns the versions of
/// every query the renders used. When `stop` fires during a render, the templates not rendered
/// yet wait for the next generation, but what was written is still reloaded.
async fn render_round(
    group: &Group,
    shared: &Shared,
    snap: &Arc<Snapshot>,
    state: &mut GroupState,
    stop: &CancellationToken,
) -> BTreeMap<Query, Option<u64>> {
    let mut seen = BTreeMap::new();
    let mut written: Vec<WrittenFile> = Vec::new();
    let mut in_place = None;
    // Runtime templates whose file already held the render (what HAProxy may run).
    let mut unchanged: Vec<(&str, String)> = Vec::new();
    let mut any_pending = false;
    state.discovering = false;
    for t in &group.templates {
        let dest = t.destination.display().to_string();
        let Some((rendered, took)) = render(shared, t, snap, state, stop).await else {
            break;
        };
        let mut newest = None;
        for q in rendered.deps() {
            let entry = snap.get(q);
            seen.insert(q.clone(), entry.map(|e| e.version));
            newest = newest.max(entry.map(|e| e.arrived));
        }
        let now = SystemTime::now();
        match rendered {
            Rendered::Done { text, .. } => {
                timing::mark(stage::RENDER_DONE);
                shared.metrics.render(&t.name, RenderResult::Ok, took);
                if state.held_back(&t.name, text.as_bytes()) {
                    debug!(template = %t.name, "same bytes as the last rejected render; trying again later");
                    continue;
                }
                match pipeline::apply(t, text.as_bytes(), &shared.env, Some(stop)).await {
                    Ok(Applied::Abandoned) => {
                        info!(template = %t.name, "the config was replaced during the check; not written (the new config writes it)");
                        break;
                    }
                    Ok(Applied::Unchanged) => {
                        if state.runtimes.has(&t.name) {
                            unchanged.push((&t.name, text));
                        }
                        state.rejected.remove(&t.name);
                        state.logged.remove(&t.name);
                        // A file kept after a failed reload stays in error until its reload
                        // goes through.
                        if !state.owes_reload(&t.name) {
                            shared
                                .board
                                .record(&t.name, &dest, now, TemplateEvent::Unchanged);
                        }
                        debug!(template = %t.name, "unchanged");
                    }
                    Ok(Applied::Written { previous }) => {
                        in_place.get_or_insert_with(|| shared.in_place.enter());
                        if t.check.is_some() {
                            shared.metrics.check(&t.name, CheckResult::Ok);
                        }
                        state.logged.remove(&t.name);
                        debug!(template = %t.name, dest = %dest, bytes = text.len(), "written; reload or runtime update next");
                        written.push((
                            Written {
                                template: t,
                                previous,
                            },
                            text,
                            newest,
                        ));
                    }
                    Err(e) => {
                        match e {
                            ApplyError::Rejected { .. } => {
                                shared.metrics.check(&t.name, CheckResult::Rejected)
                            }
                            ApplyError::CheckSpawn(_) => {
                                shared.metrics.check(&t.name, CheckResult::Error)
                            }
                            ApplyError::Write { .. } => {}
                        }
                        // Tried again after a backoff, except bytes a swap check rejected: a
                        // retry would put them in place for the length of every check.
                        let swap_rejected = matches!(e, ApplyError::Rejected { .. })
                            && t.check_mode == CheckMode::Swap;
                        state.reject(&t.name, hash(text.as_bytes()), !swap_rejected);
                        let text = e.to_string();
                        if state.should_log(&t.name, &text) {
                            error!(template = %t.name, "{text}; the destination was left as it was");
                        }
                        shared
                            .board
                            .record(&t.name, &dest, now, TemplateEvent::Failed(text));
                    }
                }
            }
            Rendered::Pending {
                missing, waiting, ..
            } => {
                any_pending = true;
                shared.metrics.render(&t.name, RenderResult::Pending, took);
                state.discovering |= !missing.is_empty();
                let since = *state.pending_since.get_or_insert_with(Instant::now);
                let reason = super::template::pending_reason(&missing, &waiting, None);
                if since.elapsed() >= PENDING_QUIET && state.should_log(&t.name, &reason) {
                    warn!(template = %t.name, "not written yet: {reason}");
                } else {
                    debug!(template = %t.name, "waiting: {reason}");
                }
                shared
                    .board
                    .record(&t.name, &dest, now, TemplateEvent::Waiting(reason));
            }
            Rendered::Failed { error, .. } => {
                shared.metrics.render(&t.name, RenderResult::Error, took);
                if state.should_log(&t.name, &error) {
                    error!(template = %t.name, "render failed; the destination was left as it was:\n{error}");
                }
                shared
                    .board
                    .record(&t.name, &dest, now, TemplateEvent::Failed(error));
            }
        }
    }
    if !any_pending {
        state.pending_since = None;
    }
    if written.is_empty() && unchanged.is_empty() {
        return seen;
    }
    let decision = if state.runtimes.is_empty() {
        runtimes::Decision {
            applied: Default::default(),
            reload: (!written.is_empty()).then(Default::default),
            failed: Vec::new(),
        }
    } else {
        let files: Vec<runtimes::WrittenFile> = written
            .iter()
            .filter(|(w, _, _)| state.runtimes.has(&w.template.name))
            .map(|(w, text, _)| runtimes::WrittenFile {
                template: &w.template.name,
                previous: w.previous.as_deref(),
                new: text.as_bytes(),
            })
            .collect();
        let unchanged: Vec<(&str, &[u8])> =
            unchanged.iter().map(|(n, t)| (*n, t.as_bytes())).collect();
        let others = written
            .iter()
            .any(|(w, _, _)| !state.runtimes.has(&w.template.name));
        state.runtimes.round(&files, &unchanged, others).await
    };
    let reloaded = match &decision.reload {
        Some(why) => {
            for (template, why) in why.iter().filter(|(t, _)| !t.is_empty()) {
                info!(template = %template, "the change needs a reload: {why}");
            }
            Some(reload_group(group, shared, state, &written).await)
        }
        None => None,
    };
    if !state.runtimes.is_empty()
        && let Some(why) = state.runtimes.verify().await
        && reloaded.is_none()
    {
        // HAProxy differs from its file in a way only a reload repairs (nothing to restore:
        // the files are right).
        info!(templates = %group.name(), "reloading to repair HAProxy: {why}");
        let _ = reload_group(group, shared, state, &[]).await;
    }
    for name in &decision.failed {
        shared.metrics.runtime_apply(name, false);
    }
    let now = SystemTime::now();
    let mut kept = Vec::new();
    for (w, text, newest) in written {
        let t = w.template;
        let dest = t.destination.display().to_string();
        if let Some(r) = &reloaded
            && group.reload.is_some()
        {
            let counted = match r {
                Ok(Reloaded::Done) => ReloadResult::Ok,
                Ok(Reloaded::NotRunning(_)) => ReloadResult::NotRunning,
                Err(_) => ReloadResult::Failed,
            };
            shared.metrics.reload(&t.name, counted);
        }
        if decision.applied.contains_key(&t.name) {
            shared.metrics.runtime_apply(&t.name, true);
        }
        let result = match &reloaded {
            Some(r) => r.as_ref().map(|_| ()),
            None => Ok(()),
        };
        match result {
            Ok(()) => {
                shared
                    .metrics
                    .written(&t.name, newest.map(|at| at.elapsed()));
                let path = match decision.applied.get(&t.name) {
                    Some(changes) => {
                        let what = if changes.is_empty() {
                            "no server changed".to_string()
                        } else {
                            changes.join(", ")
                        };
                        info!(template = %t.name, dest = %dest, bytes = text.len(), changes = %what, "written; HAProxy updated through its Runtime API, without a reload");
                        format!("runtime: {what}")
                    }
                    None => {
                        info!(template = %t.name, dest = %dest, bytes = text.len(), "written");
                        let why = decision
                            .reload
                            .as_ref()
                            .and_then(|r| r.get(&t.name))
                            .filter(|_| state.runtimes.has(&t.name));
                        match why {
                            Some(why) => format!("reload: {why}"),
                            None if group.reload.is_some() => "reload".to_string(),
                            // No reload configured: the program reads the file itself.
                            None => "write".to_string(),
                        }
                    }
                };
                state.rejected.remove(&t.name);
                shared
                    .board
                    .record(&t.name, &dest, now, TemplateEvent::Written);
                let leaving = state.runtimes.leaving(&t.name);
                shared.board.template(&t.name, &dest, |s| {
                    s.last_path = path;
                    s.leaving = leaving;
                });
            }
            Err(e) if group::kept_after_failed_reload(&w) => {
                // In place, not reloaded: a write, but no reaction time yet.
                shared.metrics.written(&t.name, None);
                state.rejected.remove(&t.name);
                kept.push(t.name.clone());
                let detail = format!(
                    "{e}; the new file was kept (there was no previous one) and the reload is tried again"
                );
                shared.board.record(
                    &t.name,
                    &dest,
                    now,
                    TemplateEvent::WrittenNotReloaded(detail),
                );
            }
            Err(e) => {
                shared.metrics.rollback(&t.name);
                state.reject(&t.name, hash(text.as_bytes()), true);
                let detail = format!("{e}; the previous file was restored");
                shared
                    .board
                    .record(&t.name, &dest, now, TemplateEvent::Failed(detail));
            }
        }
    }
    match reloaded {
        // Whatever was owed went with this reload.
        Some(Ok(_)) => settle_owed(shared, state, group),
        Some(Err(_)) if !kept.is_empty() => state.owe_reload(kept),
        // No reload (the runtime API took the change): an owed reload stays owed.
        Some(Err(_)) | None => {}
    }
    seen
}

/// Runs the reload owed to files kept in place after a failed one.
async fn retry_owed_reload(group: &Group, shared: &Shared, state: &mut GroupState) {
    let Some(reload) = group.reload.as_ref() else {
        state.owed = None;
        return;
    };
    let main_pid = *shared.main_pid.borrow();
    let result = pipeline::reload(reload, main_pid, &shared.env).await;
    if let Some(owed) = &state.owed {
        let counted = match &result {
            Ok(Reloaded::Done) => ReloadResult::Ok,
            Ok(Reloaded::NotRunning(_)) => ReloadResult::NotRunning,
            Err(_) => ReloadResult::Failed,
        };
        for name in &owed.templates {
            shared.metrics.reload(name, counted);
        }
    }
    // The program runs the files on disk now (or still the old ones): the runtimes must know.
    state.runtimes.after_reload(&result);
    match result {
        Ok(r) => {
            match r {
                Reloaded::Done => info!("reloaded (the reload owed to files kept in place)"),
                Reloaded::NotRunning(why) => {
                    info!("not reloaded: {why}; the program reads the new file when it starts")
                }
            }
            settle_owed(shared, state, group);
        }
        Err(e) => {
            let names: Vec<String> = state
                .owed
                .as_ref()
                .map(|o| o.templates.iter().cloned().collect())
                .unwrap_or_default();
            warn!(templates = %names.join("+"), "{e}; trying again later");
            let now = SystemTime::now();
            for t in group.templates.iter().filter(|t| names.contains(&t.name)) {
                let detail = format!(
                    "{e}; the new file is in place (there was no previous one) and the reload is tried again"
                );
                shared.board.record(
                    &t.name,
                    &t.destination.display().to_string(),
                    now,
                    TemplateEvent::ReloadFailed(detail),
                );
            }
            state.owe_reload(names);
        }
    }
}

/// A reload went through: the files that waited for one are current.
fn settle_owed(shared: &Shared, state: &mut GroupState, group: &Group) {
    let Some(owed) = state.owed.take() else {
        return;
    };
    let now = SystemTime::now();
    for t in group
        .templates
        .iter()
        .filter(|t| owed.templates.contains(&t.name))
    {
        shared.board.record(
            &t.name,
            &t.destination.display().to_string(),
            now,
            TemplateEvent::Reloaded,
        );
    }
}
