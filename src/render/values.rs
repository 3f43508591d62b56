//! Store data as templates see it: `tera::Value`s, converted once per store entry.
//!
//! A render reads an entry through `entry_value`, which converts the entry's data on first
//! use and keeps the result in the entry's derived slot, so every later render (and every
//! other template) reuses it. When one instance of 1 000 changes, the new entry's conversion
//! reuses the 999 unchanged instances' values from the entry it replaced (10 000 instances:
//! ~1 ms cached against ~4.6 ms converted on every call). Big first conversions
//! run on several threads.

use std::collections::BTreeMap;
use std::sync::Arc;

use tera::Value;

use crate::model::{Data, Holder, Instance, Node};
use crate::store::Entry;

/// The template view of an entry, converted once per entry and cached in its slot.
pub(super) fn entry_value(entry: &Entry) -> &Value {
    let slot = entry.derived.get_or_init(|| {
        let previous = entry.take_previous();
        let value = match (
            &entry.data,
            previous
                .as_ref()
                .and_then(|p| Some((&p.data, cached_value(p)?))),
        ) {
            (Data::Instances(list), Some((Data::Instances(old), old_values))) => {
                instances_value_reusing(list, old, old_values)
            }
            _ => data_value(&entry.data),
        };
        Box::new(value)
    });
    slot.downcast_ref::<Value>()
        .expect("only the template engine fills an entry's derived slot, with a tera::Value")
}

/// An entry's converted value, if a render has converted it.
fn cached_value(entry: &Entry) -> Option<&Value> {
    entry.derived.get()?.downcast_ref::<Value>()
}

/// Converts instances, reusing the converted value of every instance unchanged since the
/// previous answer. Both lists are in template order (the store normalizes them) and an
/// instance's sort key is unique within a service, so one merge walk finds each instance's old
/// self. Backends that keep their instances (etcd's mirror, the dir tree) hand over the very
/// same `Arc`, which compares by address; Consul's fresh answers compare field by field.
fn instances_value_reusing(
    list: &[Arc<Instance>],
    old: &[Arc<Instance>],
    old_values: &Value,
) -> Value {
    let Some(old_values) = old_values.as_array().filter(|v| v.len() == old.len()) else {
        return data_value_of(list);
    };
    let same = |o: &Arc<Instance>, inst: &Arc<Instance>| Arc::ptr_eq(o, inst) || **o == **inst;
    let mut j = 0;
    Value::from(
        list.iter()
            .map(|inst| {
                // Mostly the next old instance is this one: no sort key (an address parse)
                // needed. Keys are unique within a service, so the walk moves past it.
                if j < old.len() && same(&old[j], inst) {
                    j += 1;
                    return old_values[j - 1].clone();
                }
                let key = inst.sort_key();
                while j < old.len() && old[j].sort_key() < key {
                    j += 1;
                }
                match old.get(j) {
                    Some(o) if same(o, inst) => {
                        j += 1;
                        old_values[j - 1].clone()
                    }
                    _ => instance_value(inst),
                }
            })
            .collect::<Vec<_>>(),
    )
}

fn data_value_of(list: &[Arc<Instance>]) -> Value {
    instances_value(list)
}

pub fn data_value(data: &Data) -> Value {
    match data {
        Data::Instances(list) => data_value_of(list),
        Data::Services(list) => Value::from(
            list.iter()
                .map(|s| {
                    let mut m = BTreeMap::new();
                    m.insert("name".to_string(), Value::from(s.name.as_str()));
                    m.insert(
                        "tags".to_string(),
                        Value::from(
                            s.tags
                                .iter()
                                .map(|t| Value::from(t.as_str()))
                                .collect::<Vec<_>>(),
                        ),
                    );
                    Value::from(m)
                })
                .collect::<Vec<_>>(),
        ),
        Data::Key(v) => Value::from(v.clone().unwrap_or_default()),
        Data::Keys(list) => Value::from(
            list.iter()
                .map(|kv| {
                    let mut m = BTreeMap::new();
                    m.insert("path".to_string(), Value::from(kv.path.as_str()));
                    m.insert("value".to_string(), Value::from(kv.value.as_str()));
                    Value::from(m)
                })
                .collect::<Vec<_>>(),
        ),
        Data::Nodes(list) => Value::from(list.iter().map(node_value).collect::<Vec<_>>()),
        Data::Datacenters(list) => Value::from(
            list.iter()
                .map(|d| Value::from(d.as_str()))
                .collect::<Vec<_>>(),
        ),
        Data::Election(view) => {
            let mut m = BTreeMap::new();
            m.insert(
                "leader".to_string(),
                view.holder.as_ref().map_or_else(Value::none, holder_value),
            );
            m.insert("is_leader".to_string(), Value::from(view.is_leader));
            Value::from(m)
        }
    }
}

/// A node as `nodes()` hands it out: `name` (also as `node`), `address`, `id`, `datacenter`,
/// `tagged_addresses` and `meta`.
fn node_value(n: &Node) -> Value {
    let map = |m: &BTreeMap<String, String>| {
        Value::from(
            m.iter()
                .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                .collect::<BTreeMap<_, _>>(),
        )
    };
    let mut m = BTreeMap::new();
    m.insert("name".to_string(), Value::from(n.name.as_str()));
    // `node` too, as on instances: consul-template's `.Node` reads the same on both.
    m.insert("node".to_string(), Value::from(n.name.as_str()));
    m.insert("address".to_string(), Value::from(n.address.as_str()));
    m.insert("id".to_string(), Value::from(n.id.as_str()));
    m.insert("datacenter".to_string(), Value::from(n.datacenter.as_str()));
    m.insert("tagged_addresses".to_string(), map(&n.tagged_addresses));
    m.insert("meta".to_string(), map(&n.meta));
    Value::from(m)
}

/// An election's holder as templates see it: `id`, `address`, `port` and `addr_port` (when
/// the holder published a port) and the fencing `token`.
pub(super) fn holder_value(h: &Holder) -> Value {
    let mut m = BTreeMap::new();
    m.insert("id".to_string(), Value::from(h.value.id.as_str()));
    m.insert("address".to_string(), Value::from(h.value.address.as_str()));
    if let Some(port) = h.value.port {
        m.insert("port".to_string(), Value::from(port));
        m.insert(
            "addr_port".to_string(),
            Value::from(addr_port(&h.value.address, u64::from(port))),
        );
    }
    m.insert("token".to_string(), Value::from(h.token));
    Value::from(m)
}

/// Lists at least this long are converted on several threads (a fresh start with thousands of
/// instances; in the daemon a change converts only the instances that changed).
const PARALLEL_CONVERT: usize = 2048;

fn instances_value(list: &[Arc<Instance>]) -> Value {
    let threads = if list.len() < PARALLEL_CONVERT {
        1
    } else {
        // Not asked for small lists: it reads cgroup files.
        std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
    };
    Value::from(crate::parallel::map(list, threads, |i| instance_value(i)))
}

/// The keys of an instance's map, in the order templates iterate them.
const INSTANCE_KEYS: [&str; 9] = [
    "address",
    "addr_port",
    "id",
    "meta",
    "name",
    "node",
    "port",
    "status",
    "tags",
];

/// Field `key` of a map, found without hashing when the map has an instance's shape (the
/// key at its place in [`INSTANCE_KEYS`]); any other map is searched as usual. Filters read
/// one field per instance: hashing `addr_port` cost ~330 instructions a lookup, 3 M of a
/// 10 000-instance render.
pub(super) fn instance_field<'m>(m: &'m tera::Map, key: &'m str) -> Option<&'m Value> {
    if let Some(at) = INSTANCE_KEYS.iter().position(|k| *k == key)
        && let Some((k, v)) = m.get_index(at)
        && k.as_str() == Some(key)
    {
        return Some(v);
    }
    m.get(&tera::value::Key::Str(key))
}

/// One instance as templates see it. This runs once per instance per change (10 000 times at
/// a fresh start), so it avoids work it can: static keys, short strings inline in the value,
/// one shared value for the common empty `meta` and `tags`, `meta` and `tags` shared with the
/// instance converted before on this thread when they are equal (a service's instances mostly
/// carry the same ones), and no hashing: the map is a clone of one holding the nine keys
/// already (its hash table is copied, not rebuilt), whose values are then replaced in place.
/// Inserting the keys one by one hashed each with SipHash: 16 M of the 203 M instructions of a
/// 10 000-instance one-shot render.
fn instance_value(i: &Instance) -> Value {
    thread_local! {
        static SHAPE: tera::Map = INSTANCE_KEYS
            .iter()
            .map(|k| (tera::value::Key::Str(k), Value::none()))
            .collect();
        static EMPTY_MAP: Value = Value::from(tera::Map::new());
        static EMPTY_LIST: Value = Value::from(Vec::<Value>::new());
        static SCRATCH: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        /// The last non-empty `meta` and `tags` converted on this thread.
        static LAST_META: std::cell::RefCell<Value> = std::cell::RefCell::new(Value::none());
        static LAST_TAGS: std::cell::RefCell<Value> = std::cell::RefCell::new(Value::none());
    }
    let addr_port = SCRATCH.with_borrow_mut(|s| {
        s.clear();
        write_addr_port(s, &i.address, u64::from(i.port));
        Value::from(s.as_str())
    });
    let meta = if i.meta.is_empty() {
        EMPTY_MAP.with(Value::clone)
    } else {
        LAST_META.with_borrow_mut(|last| {
            let same = last.as_map().is_some_and(|m| {
                m.len() == i.meta.len()
                    && m.iter()
                        .zip(&i.meta)
                        .all(|((k, v), (mk, mv))| k.as_str() == Some(mk) && v.as_str() == Some(mv))
            });
            if !same {
                let meta: tera::Map = i
                    .meta
                    .iter()
                    .map(|(k, v)| {
                        (
                            tera::value::Key::String(Arc::from(k.as_str())),
                            Value::from(v.as_str()),
                        )
                    })
                    .collect();
                *last = Value::from_map(meta);
            }
            last.clone()
        })
    };
    let tags = if i.tags.is_empty() {
        EMPTY_LIST.with(Value::clone)
    } else {
        LAST_TAGS.with_borrow_mut(|last| {
            let same = last.as_array().is_some_and(|a| {
                a.len() == i.tags.len() && a.iter().zip(&i.tags).all(|(v, t)| v.as_str() == Some(t))
            });
            if !same {
                *last = Value::from(
                    i.tags
                        .iter()
                        .map(|t| Value::from(t.as_str()))
                        .collect::<Vec<_>>(),
                );
            }
            last.clone()
        })
    };
    // In INSTANCE_KEYS order.
    let values = [
        Value::from(i.address.as_str()),
        addr_port,
        Value::from(i.id.as_str()),
        meta,
        Value::from(i.name.as_str()),
        Value::from(i.node.as_str()),
        Value::from(i.port),
        Value::from(i.status.as_str()),
        tags,
    ];
    let mut m = SHAPE.with(tera::Map::clone);
    for (slot, value) in m.values_mut().zip(values) {
        *slot = value;
    }
    Value::from_map(m)
}

/// `host:port`, with IPv6 addresses bracketed: `[::1]:8080`.
pub fn addr_port(addr: &str, port: u64) -> String {
    let mut out = String::with_capacity(addr.len() + 8);
    write_addr_port(&mut out, addr, port);
    out
}

/// `addr:port`, with an IPv6 address in brackets. Without `write!`: the formatting machinery
/// cost 380 instructions per instance, 3% of a 10 000-instance one-shot render.
pub(super) fn write_addr_port(out: &mut String, addr: &str, port: u64) {
    let bracketed = addr.contains(':') && !addr.starts_with('[');
    if bracketed {
        out.push('[');
    }
    out.push_str(addr);
    if bracketed {
        out.push(']');
    }
    out.push(':');
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = port;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[at..].iter().map(|&d| char::from(d)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Status;
    use tera::value::Key;

    /// An instance's map answers from its shape; a map of any other shape (a user's own
    /// dict, keys in another order, a missing key) answers as a lookup would.
    #[test]
    fn instance_fields_are_found_in_instance_maps_and_in_any_other_map() {
        let i = Instance {
            id: "w1".into(),
            name: "web".into(),
            node: "n1".into(),
            address: "10.0.0.1".into(),
            port: 80,
            tags: vec!["a".into()],
            meta: Default::default(),
            status: Status::Passing,
        };
        let v = instance_value(&i);
        let m = v.as_map().unwrap();
        for k in INSTANCE_KEYS {
            assert_eq!(instance_field(m, k), m.get(&Key::Str(k)), "{k}");
        }
        assert_eq!(
            instance_field(m, "addr_port").and_then(Value::as_str),
            Some("10.0.0.1:80")
        );
        assert_eq!(instance_field(m, "weight"), None);
        let other: tera::Map = [("tags", "x"), ("addr_port", "h:1")]
            .into_iter()
            .map(|(k, v)| (Key::Str(k), Value::from(v)))
            .collect();
        assert_eq!(
            instance_field(&other, "addr_port").and_then(Value::as_str),
            Some("h:1")
        );
        assert_eq!(
            instance_field(&other, "tags").and_then(Value::as_str),
            Some("x")
        );
        assert_eq!(instance_field(&other, "id"), None);
    }

    #[test]
    fn an_instance_map_holds_each_field_under_its_key_in_order_and_finds_it_by_key() {
        let i = Instance {
            id: "w1".into(),
            name: "web".into(),
            node: "n1".into(),
            address: "::1".into(),
            port: 8080,
            tags: vec!["a".into(), "b".into()],
            meta: [("zone".to_string(), "eu".to_string())].into(),
            status: Status::Warning,
        };
        // The second map is cloned from the same shape as the first: neither may share values.
        let first = instance_value(&i);
        let bare = Instance {
            tags: vec![],
            meta: Default::default(),
            ..i.clone()
        };
        let second = instance_value(&bare);
        let m = first.as_map().unwrap();
        let keys: Vec<String> = m.keys().map(|k| k.to_string()).collect();
        assert_eq!(keys, INSTANCE_KEYS);
        let get = |m: &tera::Map, k: &'static str| m.get(&Key::Str(k)).cloned().unwrap();
        assert_eq!(get(m, "address").as_str(), Some("::1"));
        assert_eq!(get(m, "addr_port").as_str(), Some("[::1]:8080"));
        assert_eq!(get(m, "id").as_str(), Some("w1"));
        assert_eq!(get(m, "name").as_str(), Some("web"));
        assert_eq!(get(m, "node").as_str(), Some("n1"));
        assert_eq!(get(m, "port").as_i64(), Some(8080));
        assert_eq!(get(m, "status").as_str(), Some("warning"));
        assert_eq!(get(m, "tags").to_string(), r#"["a", "b"]"#);
        let meta = get(m, "meta");
        assert_eq!(get(meta.as_map().unwrap(), "zone").as_str(), Some("eu"));
        let m2 = second.as_map().unwrap();
        assert_eq!(get(m2, "tags").to_string(), "[]");
        assert!(get(m2, "meta").as_map().unwrap().is_empty());
        assert_eq!(get(m2, "port").as_i64(), Some(8080));
    }

    /// Instances converted one after another with the same `tags` and `meta` share one value
    /// of each (nothing is built or allocated for the second); different ones get their own.
    #[test]
    fn equal_tags_and_meta_of_consecutive_instances_are_shared() {
        let mk = |id: &str, tags: &[&str], zone: &str| Instance {
            id: id.into(),
            name: "web".into(),
            node: "n1".into(),
            address: "10.0.0.1".into(),
            port: 80,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            meta: [("zone".to_string(), zone.to_string())].into(),
            status: Status::Passing,
        };
        let field =
            |v: &Value, k: &'static str| v.as_map().unwrap().get(&Key::Str(k)).cloned().unwrap();
        let tags_at = |v: &Value| field(v, "tags").as_array().unwrap().as_ptr();
        let meta_at = |v: &Value| field(v, "meta").as_map().unwrap() as *const tera::Map;
        let a = instance_value(&mk("a", &["v1", "blue"], "eu"));
        let b = instance_value(&mk("b", &["v1", "blue"], "eu"));
        assert_eq!(tags_at(&a), tags_at(&b));
        assert_eq!(meta_at(&a), meta_at(&b));
        // One tag more, one fewer, another value: each its own, and right.
        for (tags, zone) in [
            (&["v1", "blue", "x"][..], "eu"),
            (&["v1"][..], "us"),
            (&["v2", "blue"][..], "eu"),
        ] {
            let c = instance_value(&mk("c", tags, zone));
            assert_ne!(tags_at(&c), tags_at(&a), "{tags:?}");
            let expected: Vec<String> = tags.iter().map(|t| format!("{t:?}")).collect();
            assert_eq!(
                field(&c, "tags").to_string(),
                format!("[{}]", expected.join(", "))
            );
            assert_eq!(field(&field(&c, "meta"), "zone").as_str(), Some(zone));
        }
        let d = instance_value(&mk("d", &["v1"], "eu"));
        assert_ne!(
            meta_at(&d),
            meta_at(&a),
            "the zone changed back: a new value"
        );
        assert_eq!(field(&field(&d, "meta"), "zone").as_str(), Some("eu"));
    }

    #[test]
    fn addr_port_brackets_ipv6_and_prints_every_port() {
        assert_eq!(addr_port("10.0.0.1", 0), "10.0.0.1:0");
        assert_eq!(addr_port("::1", 8080), "[::1]:8080");
        assert_eq!(addr_port("[::1]", 65535), "[::1]:65535");
        assert_eq!(addr_port("db.internal", 10), "db.internal:10");
        assert_eq!(addr_port("h", u64::MAX), format!("h:{}", u64::MAX));
    }
}
