//! An in-memory copy of everything under the prefix, kept current one event at a time.
//!
//! The watcher reads the whole prefix once, then applies each watch event here. An event
//! touches one service or one key, and [`Changes`] records which: only the wanted queries it
//! affects are answered again, and answering `service(x)` walks x's instances only, so one
//! change among 1 000 instances costs one event and one service's worth of work, never a
//! re-read of the prefix.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;
use std::time::SystemTime;

use tracing::{debug, warn};

use super::wire::{Event, EventKind, Kv};
use crate::catalog::record::{Record, RecordError};
use crate::model::{
    AddressOrder, Data, Instance, KeyValue, Query, ServiceSummary, check_name, shown,
};

/// Where an instance sorts in a template: (address, port, id), IP addresses numerically.
type Order = (AddressOrder<String>, u16, String);

/// One service's valid instances, kept in the order templates see them so that the store's
/// normalizing sort is a linear pass, and a count of instances per tag so that `services()`
/// learns of a new or vanished tag without looking at every instance.
#[derive(Debug, Default)]
struct Service {
    instances: BTreeMap<Order, Arc<Instance>>,
    by_id: HashMap<String, Order>,
    tags: BTreeMap<String, usize>,
}

impl Service {
    fn get(&self, id: &str) -> Option<&Instance> {
        self.by_id
            .get(id)
            .and_then(|o| self.instances.get(o))
            .map(|i| &**i)
    }

    /// Inserts or replaces; returns whether the set of tags changed.
    fn insert(&mut self, id: String, i: Arc<Instance>) -> bool {
        let mut tags_changed = self.remove(&id).is_some_and(|(_, changed)| changed);
        for tag in unique_tags(&i) {
            let n = self.tags.entry(tag.to_string()).or_insert(0);
            *n += 1;
            tags_changed |= *n == 1;
        }
        let order = i.owned_sort_key();
        self.by_id.insert(id, order.clone());
        self.instances.insert(order, i);
        tags_changed
    }

    /// Removes by id; returns the instance and whether the set of tags changed.
    fn remove(&mut self, id: &str) -> Option<(Arc<Instance>, bool)> {
        let order = self.by_id.remove(id)?;
        let old = self.instances.remove(&order)?;
        let mut tags_changed = false;
        for tag in unique_tags(&old) {
            if let Some(n) = self.tags.get_mut(tag) {
                *n -= 1;
                if *n == 0 {
                    self.tags.remove(tag);
                    tags_changed = true;
                }
            }
        }
        Some((old, tags_changed))
    }
}

fn unique_tags(i: &Instance) -> BTreeSet<&str> {
    i.tags.iter().map(String::as_str).collect()
}

/// Where a key under the prefix belongs.
#[derive(Debug, PartialEq, Eq)]
enum Slot<'a> {
    Instance {
        service: &'a str,
        id: &'a str,
    },
    Kv(&'a str),
    /// Not ours (another tool's key under the prefix, a malformed path).
    Other,
}

/// What a batch of events touched.
#[derive(Debug, Default)]
pub struct Changes {
    /// Everything may have changed (a fresh read).
    pub everything: bool,
    pub services: BTreeSet<String>,
    /// A service appeared, disappeared or changed its tags.
    pub service_list: bool,
    pub keys: BTreeSet<String>,
}

impl Changes {
    pub fn everything() -> Changes {
        Changes {
            everything: true,
            ..Changes::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.everything && self.services.is_empty() && !self.service_list && self.keys.is_empty()
    }

    /// Whether the answer to `q` may differ after these changes.
    pub fn affects(&self, q: &Query) -> bool {
        if self.everything {
            return true;
        }
        match q {
            Query::Service(name) => self.services.contains(name),
            Query::Services => self.service_list,
            Query::Key(path) => self.keys.contains(key_path(path)),
            Query::Keys(prefix) => {
                let prefix = prefix_path(prefix);
                self.keys
                    .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
                    .next()
                    .is_some_and(|k| k.starts_with(prefix))
            }
            Query::Election(_) => false,
            // Never asked (the template engine refuses Consul-only queries here).
            Query::Nodes | Query::Datacenters | Query::InDatacenter(..) => false,
        }
    }
}

/// A key query's path as stored: no leading or trailing slashes (as the dir catalog).
fn key_path(path: &str) -> &str {
    path.trim_matches('/')
}

fn prefix_path(prefix: &str) -> &str {
    prefix.trim_start_matches('/')
}

#[derive(Debug)]
pub struct Mirror {
    /// `PREFIX/`, e.g. `/rewire/`.
    base: String,
    services: BTreeMap<String, Service>,
    kv: BTreeMap<String, String>,
    /// KV paths whose only value was refused (over `max_file`), with the reason: such a key
    /// has no answer, so a template waits (and the file in place stays) instead of rendering
    /// the key's `default` as if the key did not exist.
    refused: BTreeMap<String, String>,
    /// `[catalog] max_file`: a bigger value (record or KV) is refused.
    max_value: u64,
    /// Keys warned about, with the problem: the same problem again on the same key goes to
    /// debug (a writer putting a bad record 500 times a second wrote 80 KB/s of warnings).
    /// Forgotten when the key is fixed or deleted; past [`MAX_WARNED`] keys, new ones go to
    /// debug too.
    warned: BTreeMap<String, &'static str>,
}

/// The most keys [`Mirror::warned`] remembers.
const MAX_WARNED: usize = 4096;

/// `warn!` the first time, `debug!` after (see [`Mirror::warned`]).
macro_rules! warn_once {
    ($loud:expr, $($arg:tt)*) => {
        if $loud {
            warn!($($arg)*)
        } else {
            debug!($($arg)*)
        }
    };
}

impl Mirror {
    pub fn new(base: &str, max_value: u64) -> Mirror {
        Mirror {
            base: base.to_string(),
            services: BTreeMap::new(),
            refused: BTreeMap::new(),
            kv: BTreeMap::new(),
            max_value,
            warned: BTreeMap::new(),
        }
    }

    /// A mirror of a range read's key/value pairs.
    pub fn from_kvs(base: &str, max_value: u64, kvs: Vec<Kv>) -> Mirror {
        let mut m = Mirror::new(base, max_value);
        let mut ignored = Changes::default();
        for kv in kvs {
            m.put(kv, &mut ignored);
        }
        m
    }

    /// Applies one watch event, recording what it touched.
    pub fn apply(&mut self, event: Event, changes: &mut Changes) {
        match event.kind {
            EventKind::Put => self.put(event.kv, changes),
            EventKind::Delete => self.delete(&event.kv.key, changes),
        }
    }

    fn slot<'k>(&self, key: &'k [u8]) -> Option<(Slot<'k>, &'k str)> {
        let key = std::str::from_utf8(key).ok()?;
        let rel = key.strip_prefix(self.base.as_str())?;
        let slot = if let Some(rest) = rel.strip_prefix("services/") {
            match rest.split_once('/') {
                Some((service, id))
                    if !service.is_empty() && !id.is_empty() && !id.contains('/') =>
                {
                    Slot::Instance { service, id }
                }
                _ => Slot::Other,
            }
        } else if let Some(path) = rel.strip_prefix("kv/") {
            if path.is_empty() {
                Slot::Other
            } else {
                Slot::Kv(path)
            }
        } else {
            Slot::Other
        };
        Some((slot, key))
    }

    /// Whether `problem` on `key` is news (and remembers it).
    fn first_time(&mut self, key: &str, problem: &'static str) -> bool {
        if self.warned.get(key) == Some(&problem) {
            return false;
        }
        if self.warned.len() >= MAX_WARNED && !self.warned.contains_key(key) {
            return false;
        }
        self.warned.insert(key.to_string(), problem);
        true
    }

    /// A put: an invalid or oversized value keeps what the key held before (only a deletion,
    /// or the lease's expiry, removes an instance), with a warning naming the key.
    fn put(&mut self, kv: Kv, changes: &mut Changes) {
        let Some((slot, key)) = self.slot(&kv.key) else {
            // A key that is not UTF-8 under the prefix names nothing rewire can show; say so
            // rather than leave an instance out without a word (found by a hostile-data hunt).
            let lossy = String::from_utf8_lossy(&kv.key).into_owned();
            if lossy.starts_with(self.base.as_str()) && self.first_time(&lossy, "not utf-8") {
                warn!(key = %shown(&lossy), "etcd key is not UTF-8: ignored");
            }
            return;
        };
        if kv.value.len() as u64 > self.max_value {
            let had_value = match slot {
                Slot::Kv(path) => self.kv.contains_key(path),
                Slot::Instance { service, id } => self
                    .services
                    .get(service)
                    .is_some_and(|s| s.get(id).is_some()),
                Slot::Other => false,
            };
            let loud = self.first_time(key, "max_file");
            if had_value {
                warn_once!(loud, key = %shown(key), bytes = kv.value.len(), limit = self.max_value, "etcd value over [catalog] max_file ignored; keeping what the key held before");
            } else if matches!(slot, Slot::Kv(_)) {
                warn_once!(loud, key = %shown(key), bytes = kv.value.len(), limit = self.max_value, "etcd value over [catalog] max_file refused; templates that use it wait for a usable value");
            } else {
                warn_once!(loud, key = %shown(key), bytes = kv.value.len(), limit = self.max_value, "etcd value over [catalog] max_file refused; the instance is left out");
            }
            if let Slot::Kv(path) = slot
                && !had_value
            {
                let why = format!(
                    "etcd key {} holds {} bytes, over [catalog] max_file ({} bytes): fix the value or raise max_file",
                    shown(key),
                    kv.value.len(),
                    self.max_value
                );
                self.refused.insert(path.to_string(), why);
            }
            return;
        }
        if let Slot::Kv(path) = slot {
            self.refused.remove(path);
        }
        match slot {
            Slot::Instance { service, id } => match decode_instance(service, id, &kv.value) {
                Ok(instance) => {
                    self.warned.remove(key);
                    let (service, id) = (service.to_string(), id.to_string());
                    self.put_instance(service, id, instance, changes);
                }
                Err(e) => {
                    let kept = self
                        .services
                        .get(service)
                        .is_some_and(|s| s.get(id).is_some());
                    let loud = self.first_time(key, "invalid");
                    if kept {
                        warn_once!(loud, key = %shown(key), error = %e, "invalid instance record; keeping the last good one until it is fixed or deleted");
                    } else {
                        warn_once!(loud, key = %shown(key), error = %e, "invalid instance skipped");
                    }
                }
            },
            Slot::Kv(path) => {
                self.warned.remove(key);
                let value = String::from_utf8_lossy(&kv.value);
                if self.kv.get(path).is_some_and(|old| *old == value) {
                    return;
                }
                let path = path.to_string();
                self.kv.insert(path.clone(), value.into_owned());
                changes.keys.insert(path);
            }
            Slot::Other => {
                let rel = key.strip_prefix(self.base.as_str()).unwrap_or(key);
                if rel.starts_with("services/") {
                    let loud = self.first_time(key, "misplaced");
                    warn_once!(loud, key = %shown(key), "ignored: an instance key is {}services/<service>/<id>", self.base);
                }
            }
        }
    }

    fn delete(&mut self, key: &[u8], changes: &mut Changes) {
        let Some((slot, shown_key)) = self.slot(key) else {
            return;
        };
        self.warned.remove(shown_key);
        match slot {
            Slot::Instance { service, id } => {
                let (service, id) = (service.to_string(), id.to_string());
                self.remove_instance(&service, &id, changes);
            }
            Slot::Kv(path) => {
                let refused = self.refused.remove(path).is_some();
                if self.kv.remove(path).is_some() || refused {
                    changes.keys.insert(path.to_string());
                }
            }
            Slot::Other => {}
        }
    }

    fn put_instance(&mut self, service: String, id: String, i: Instance, changes: &mut Changes) {
        let entry = match self.services.get_mut(&service) {
            Some(entry) => entry,
            None => {
                changes.service_list = true;
                self.services.entry(service.clone()).or_default()
            }
        };
        if entry.get(&id) == Some(&i) {
            return;
        }
        if entry.insert(id, Arc::new(i)) {
            changes.service_list = true;
        }
        changes.services.insert(service);
    }

    fn remove_instance(&mut self, service: &str, id: &str, changes: &mut Changes) {
        let Some(entry) = self.services.get_mut(service) else {
            return;
        };
        let Some((_, tags_changed)) = entry.remove(id) else {
            return;
        };
        changes.services.insert(service.to_string());
        if entry.instances.is_empty() {
            self.services.remove(service);
            changes.service_list = true;
        } else if tags_changed {
            changes.service_list = true;
        }
    }

    /// The answer to one query from what the mirror holds; `Err` with the reason for a key
    /// whose only value was refused (see `refused`).
    pub fn answer(&self, q: &Query) -> Result<Data, String> {
        if let Query::Key(path) = q
            && let Some(why) = self.refused.get(key_path(path))
        {
            return Err(why.clone());
        }
        Ok(match q {
            Query::Service(name) => Data::Instances(
                self.services
                    .get(name)
                    .map(|s| s.instances.values().cloned().collect())
                    .unwrap_or_default(),
            ),
            Query::Services => Data::Services(
                self.services
                    .iter()
                    .map(|(name, s)| ServiceSummary {
                        name: name.clone(),
                        tags: s.tags.keys().cloned().collect(),
                    })
                    .collect(),
            ),
            Query::Key(path) => Data::Key(self.kv.get(key_path(path)).cloned()),
            Query::Keys(prefix) => {
                let prefix = prefix_path(prefix);
                Data::Keys(
                    self.kv
                        .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
                        .take_while(|(k, _)| k.starts_with(prefix))
                        .map(|(k, v)| KeyValue {
                            path: k.clone(),
                            value: v.clone(),
                        })
                        .collect(),
                )
            }
            // Never asked: elections are not catalog queries (`Query::is_catalog`), and the
            // template engine refuses Consul-only queries on other catalogs.
            Query::Election(_) | Query::Nodes | Query::Datacenters | Query::InDatacenter(..) => {
                Data::empty_for(q)
            }
        })
    }

    /// Number of valid instances held (for logs).
    pub fn instance_count(&self) -> usize {
        self.services.values().map(|s| s.instances.len()).sum()
    }

    pub fn key_count(&self) -> usize {
        self.kv.len()
    }
}

/// Decodes and validates an instance record. The node defaults to empty: an etcd catalog spans
/// machines, and records rewire writes always name their node.
fn decode_instance(service: &str, id: &str, value: &[u8]) -> Result<Instance, RecordError> {
    check_name(id).map_err(RecordError::InstanceId)?;
    let record = Record::parse_lenient(value)?;
    // Expiry is etcd's job (the lease); `expires_at` is only honoured as written.
    record.into_instance(service, id, "", SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Status;

    const BASE: &str = "/rewire/";

    fn kv(key: &str, value: &str) -> Kv {
        Kv {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            mod_revision: 1,
            create_revision: 1,
            lease: 0,
        }
    }

    fn put(key: &str, value: &str) -> Event {
        Event {
            kind: EventKind::Put,
            kv: kv(key, value),
        }
    }

    fn delete(key: &str) -> Event {
        Event {
            kind: EventKind::Delete,
            kv: kv(key, ""),
        }
    }

    fn inst(addr: &str, port: u16, tags: &[&str], status: &str) -> String {
        serde_json::json!({"address": addr, "port": port, "tags": tags, "status": status})
            .to_string()
    }

    fn ids(d: &Data) -> Vec<String> {
        let Data::Instances(list) = d else {
            panic!("not instances: {d:?}")
        };
        list.iter().map(|i| i.id.clone()).collect()
    }

    fn sample() -> Mirror {
        Mirror::from_kvs(
            BASE,
            u64::MAX,
            vec![
                kv(
                    "/rewire/services/web/w1",
                    &inst("10.0.0.1", 80, &["a"], "passing"),
                ),
                kv(
                    "/rewire/services/web/w2",
                    &inst("10.0.0.2", 80, &["b"], "critical"),
                ),
                kv(
                    "/rewire/services/db/d1",
                    &inst("10.0.0.9", 5432, &[], "passing"),
                ),
                kv("/rewire/kv/app/name", "shop"),
                kv("/rewire/kv/app/port", "8080"),
                kv("/rewire/kv/other", "x"),
                kv("/rewire/elsewhere/x", "ignored"),
                kv("/rewireX/kv/app/name", "outside the prefix"),
            ],
        )
    }

    #[test]
    fn a_bad_record_put_again_is_warned_about_once_until_fixed() {
        let mut m = Mirror::new(BASE, 1 << 20);
        let key = "/rewire/services/web/a";
        let mut changes = Changes::default();
        m.apply(
            put(key, r#"{"address":"not an address!","port":1}"#),
            &mut changes,
        );
        assert_eq!(m.warned.get(key), Some(&"invalid"));
        // The same problem again: not news.
        assert!(!m.first_time(key, "invalid"));
        m.apply(
            put(key, r#"{"address":"10.0.0.1","port":80}"#),
            &mut changes,
        );
        assert!(m.warned.is_empty());
        m.apply(put(key, "{"), &mut changes);
        m.apply(delete(key), &mut changes);
        assert!(m.warned.is_empty());
        // Bounded.
        for i in 0..MAX_WARNED + 10 {
            m.first_time(&format!("/rewire/services/web/{i}"), "invalid");
        }
        assert_eq!(m.warned.len(), MAX_WARNED);
    }

    #[test]
    fn a_key_that_is_not_utf8_is_warned_about_once() {
        let mut m = Mirror::new(BASE, 1 << 20);
        let mut changes = Changes::default();
        let mut bad = put(
            "/rewire/services/api",
            r#"{"address":"10.0.0.1","port":80}"#,
        );
        bad.kv.key.extend_from_slice(b"\xff/x10");
        m.apply(bad, &mut changes);
        assert!(m.services.is_empty());
        assert_eq!(m.warned.len(), 1, "{:?}", m.warned);
        assert!(m.warned.values().all(|p| *p == "not utf-8"));
        // Outside the prefix: not rewire's business.
        let mut other = put("/elsewhere/", "x");
        other.kv.key.push(0xff);
        m.apply(other, &mut changes);
        assert_eq!(m.warned.len(), 1);
    }

    #[test]
    fn range_answers_every_query_kind() {
        let m = sample();
        assert_eq!(
            ids(&m.answer(&Query::Service("web".into())).unwrap()),
            ["w1", "w2"]
        );
        let Data::Instances(web) = m.answer(&Query::Service("web".into())).unwrap() else {
            unreachable!()
        };
        assert_eq!(web[1].status, Status::Critical);
        assert_eq!(web[0].port, 80);
        assert_eq!(
            m.answer(&Query::Service("nope".into())).unwrap(),
            Data::Instances(vec![])
        );
        assert_eq!(
            m.answer(&Query::Services).unwrap(),
            Data::Services(vec![
                ServiceSummary {
                    name: "db".into(),
                    tags: vec![]
                },
                ServiceSummary {
                    name: "web".into(),
                    tags: vec!["a".into(), "b".into()]
                },
            ])
        );
        assert_eq!(
            m.answer(&Query::Key("app/name".into())).unwrap(),
            Data::Key(Some("shop".into()))
        );
        assert_eq!(
            m.answer(&Query::Key("/app/name".into())).unwrap(),
            Data::Key(Some("shop".into()))
        );
        assert_eq!(
            m.answer(&Query::Key("app/none".into())).unwrap(),
            Data::Key(None)
        );
        assert_eq!(
            m.answer(&Query::Keys("app/".into())).unwrap(),
            Data::Keys(vec![
                KeyValue {
                    path: "app/name".into(),
                    value: "shop".into()
                },
                KeyValue {
                    path: "app/port".into(),
                    value: "8080".into()
                },
            ])
        );
        assert_eq!(
            m.answer(&Query::Keys("nothing/".into())).unwrap(),
            Data::Keys(vec![])
        );
        assert_eq!(m.key_count(), 3);
        assert_eq!(m.instance_count(), 3);
    }

    #[test]
    fn invalid_instances_are_skipped() {
        let m = Mirror::from_kvs(
            BASE,
            u64::MAX,
            vec![
                kv(
                    "/rewire/services/web/ok",
                    &inst("10.0.0.1", 80, &[], "passing"),
                ),
                kv(
                    "/rewire/services/web/badport",
                    &inst("10.0.0.1", 0, &[], "passing"),
                ),
                kv(
                    "/rewire/services/web/badaddr",
                    &inst("evil; rm -rf /", 80, &[], "passing"),
                ),
                kv("/rewire/services/web/notjson", "{"),
                kv(
                    "/rewire/services/web/bad id!",
                    &inst("10.0.0.1", 81, &[], "passing"),
                ),
                kv(
                    "/rewire/services/web/a/b",
                    &inst("10.0.0.1", 82, &[], "passing"),
                ),
            ],
        );
        assert_eq!(
            ids(&m.answer(&Query::Service("web".into())).unwrap()),
            ["ok"]
        );
    }

    #[test]
    fn events_touch_only_their_service_or_key() {
        let mut m = sample();
        let mut c = Changes::default();
        m.apply(
            put(
                "/rewire/services/web/w3",
                &inst("10.0.0.3", 80, &["a"], "passing"),
            ),
            &mut c,
        );
        assert!(c.affects(&Query::Service("web".into())));
        assert!(!c.affects(&Query::Service("db".into())));
        assert!(!c.affects(&Query::Services), "tags and names unchanged");
        assert!(!c.affects(&Query::Keys("".into())));
        assert_eq!(
            ids(&m.answer(&Query::Service("web".into())).unwrap()),
            ["w1", "w2", "w3"]
        );

        let mut c = Changes::default();
        m.apply(
            put(
                "/rewire/services/web/w3",
                &inst("10.0.0.3", 80, &["new"], "passing"),
            ),
            &mut c,
        );
        assert!(c.affects(&Query::Services), "a new tag changes services()");

        let mut c = Changes::default();
        m.apply(put("/rewire/kv/app/name", "shop2"), &mut c);
        assert!(c.affects(&Query::Key("app/name".into())));
        assert!(c.affects(&Query::Keys("app/".into())));
        assert!(c.affects(&Query::Keys("".into())));
        assert!(!c.affects(&Query::Key("app/port".into())));
        assert!(!c.affects(&Query::Keys("other".into())));
        assert!(!c.affects(&Query::Service("web".into())));

        let mut c = Changes::default();
        m.apply(put("/rewire/kv/app/name", "shop2"), &mut c);
        assert!(c.is_empty(), "same value again is no change");

        let mut c = Changes::default();
        m.apply(delete("/rewire/services/db/d1"), &mut c);
        assert!(c.affects(&Query::Services), "db is gone");
        assert_eq!(
            m.answer(&Query::Service("db".into())).unwrap(),
            Data::Instances(vec![])
        );

        let mut c = Changes::default();
        m.apply(delete("/rewire/services/db/d1"), &mut c);
        m.apply(delete("/rewire/kv/absent"), &mut c);
        m.apply(put("/rewire/elsewhere/y", "z"), &mut c);
        assert!(c.is_empty());
    }

    #[test]
    fn services_change_only_when_a_tag_appears_or_vanishes() {
        let mut m = Mirror::new(BASE, u64::MAX);
        let mut c = Changes::default();
        m.apply(
            put(
                "/rewire/services/web/a",
                &inst("10.0.0.1", 80, &["x", "x"], "passing"),
            ),
            &mut c,
        );
        assert!(c.affects(&Query::Services), "new service");
        let mut c = Changes::default();
        m.apply(
            put(
                "/rewire/services/web/b",
                &inst("10.0.0.2", 80, &["x"], "passing"),
            ),
            &mut c,
        );
        assert!(!c.affects(&Query::Services), "x already known");
        let mut c = Changes::default();
        m.apply(delete("/rewire/services/web/a"), &mut c);
        assert!(!c.affects(&Query::Services), "b still carries x");
        let mut c = Changes::default();
        m.apply(
            put(
                "/rewire/services/web/b",
                &inst("10.0.0.2", 80, &["y"], "passing"),
            ),
            &mut c,
        );
        assert!(c.affects(&Query::Services), "x gone, y new");
        let Data::Services(list) = m.answer(&Query::Services).unwrap() else {
            unreachable!()
        };
        assert_eq!(list[0].tags, ["y"]);
    }

    #[test]
    fn answers_come_in_template_order_after_moves() {
        let mut m = sample();
        let mut c = Changes::default();
        m.apply(
            put(
                "/rewire/services/web/w1",
                &inst("10.0.0.3", 80, &["a"], "passing"),
            ),
            &mut c,
        );
        let d = m.answer(&Query::Service("web".into())).unwrap();
        assert_eq!(ids(&d), ["w2", "w1"]);
        assert_eq!(d.clone().normalize(), d, "already normalized");
    }

    #[test]
    fn ip_addresses_are_held_in_numeric_order_not_string_order() {
        // As strings "10.0.0.10" < "10.0.0.9"; templates see 10.0.0.9 first. Held in string
        // order, every answer had to be sorted again by the store.
        let addrs = ["db.local", "10.0.0.10", "::1", "10.0.0.9", "10.0.1.0"];
        let kvs = addrs
            .iter()
            .enumerate()
            .map(|(n, a)| {
                kv(
                    &format!("/rewire/services/web/w{n}"),
                    &inst(a, 80, &[], "passing"),
                )
            })
            .collect();
        let m = Mirror::from_kvs(BASE, u64::MAX, kvs);
        let d = m.answer(&Query::Service("web".into())).unwrap();
        let Data::Instances(list) = &d else {
            panic!("not instances: {d:?}")
        };
        let held: Vec<&str> = list.iter().map(|i| i.address.as_str()).collect();
        assert_eq!(
            held,
            ["10.0.0.9", "10.0.0.10", "10.0.1.0", "::1", "db.local"]
        );
        assert_eq!(d.clone().normalize(), d, "not in the store's order");
    }

    #[test]
    fn an_invalid_or_oversized_update_keeps_the_last_good_value() {
        let mut m = sample();
        let before = m.answer(&Query::Service("web".into())).unwrap();
        let mut c = Changes::default();
        m.apply(put("/rewire/services/web/w1", "garbage"), &mut c);
        assert!(c.is_empty(), "{c:?}");
        assert_eq!(m.answer(&Query::Service("web".into())).unwrap(), before);
        let mut small = Mirror::from_kvs(BASE, 4, vec![kv("/rewire/kv/app/name", "shop")]);
        small.apply(put("/rewire/kv/app/name", "too long"), &mut c);
        assert!(c.is_empty(), "{c:?}");
        assert_eq!(
            small.answer(&Query::Key("app/name".into())),
            Ok(Data::Key(Some("shop".into())))
        );
        // A key whose only value is too big has no answer (not "absent": its default would
        // render as if it did not exist), until it gets a usable value or is deleted.
        let mut fresh = Mirror::from_kvs(BASE, 4, vec![kv("/rewire/kv/app/big", "too long")]);
        let big = Query::Key("app/big".into());
        let why = fresh.answer(&big).unwrap_err();
        assert!(why.contains("over [catalog] max_file"), "{why}");
        fresh.apply(put("/rewire/kv/app/big", "ok"), &mut c);
        assert_eq!(fresh.answer(&big), Ok(Data::Key(Some("ok".into()))));
        fresh.apply(put("/rewire/kv/app/big", "too long"), &mut c);
        assert_eq!(
            fresh.answer(&big),
            Ok(Data::Key(Some("ok".into()))),
            "the last good value stays"
        );
        let mut gone = Mirror::from_kvs(BASE, 4, vec![kv("/rewire/kv/app/big", "too long")]);
        gone.apply(delete("/rewire/kv/app/big"), &mut c);
        assert_eq!(gone.answer(&big), Ok(Data::Key(None)));
        m.apply(delete("/rewire/services/web/w1"), &mut c);
        assert_eq!(
            ids(&m.answer(&Query::Service("web".into())).unwrap()),
            ["w2"]
        );
    }

    #[test]
    fn one_change_among_a_thousand_instances_is_cheap() {
        let kvs = (0..1000)
            .map(|n| {
                kv(
                    &format!("/rewire/services/web/w{n}"),
                    &inst(
                        &format!("10.0.{}.{}", n / 250, n % 250 + 1),
                        80,
                        &["t"],
                        "passing",
                    ),
                )
            })
            .collect();
        let mut m = Mirror::from_kvs(BASE, u64::MAX, kvs);
        let q = Query::Service("web".into());
        let store = crate::store::Store::new();
        store.update(q.clone(), m.answer(&q).unwrap());
        let start = std::time::Instant::now();
        let rounds = 100;
        for n in 0..rounds {
            let mut c = Changes::default();
            m.apply(
                put(
                    "/rewire/services/web/w500",
                    &inst("10.0.2.1", 1000 + n, &["t"], "passing"),
                ),
                &mut c,
            );
            assert!(c.affects(&q) && !c.affects(&Query::Services));
            assert!(store.update(q.clone(), m.answer(&q).unwrap()));
        }
        let each = start.elapsed() / u32::from(rounds);
        // Typically ~0.1 ms in a debug build; the bound only catches an O(all keys) regression
        // on a busy machine.
        assert!(
            each < std::time::Duration::from_millis(20),
            "{each:?} per change"
        );
    }
}
