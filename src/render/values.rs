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
    if threads < 2 {
        return Value::from(list.iter().map(|i| instance_value(i)).collect::<Vec<_>>());
    }
    let chunk = list.len().div_ceil(threads);
    let values: Vec<Value> = std::thread::scope(|s| {
        let parts: Vec<_> = list
            .chunks(chunk)
            .map(|c| s.spawn(|| c.iter().map(|i| instance_value(i)).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    Value::from(values)
}

/// One instance as templates see it. This runs once per instance per change (10 000 times at
/// a fresh start), so it avoids allocations it can: static keys, short strings inline in the
/// value, one shared value for the common empty `meta` and `tags`.
fn instance_value(i: &Instance) -> Value {
    thread_local! {
        static EMPTY_MAP: Value = Value::from(tera::Map::new());
        static EMPTY_LIST: Value = Value::from(Vec::<Value>::new());
        static SCRATCH: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    // Tera's own map, filled directly: one hashing per key, no second map to copy from.
    let mut m = tera::Map::with_capacity(9);
    let key = tera::value::Key::Str;
    m.insert(key("address"), Value::from(i.address.as_str()));
    m.insert(
        key("addr_port"),
        SCRATCH.with_borrow_mut(|s| {
            s.clear();
            write_addr_port(s, &i.address, u64::from(i.port));
            Value::from(s.as_str())
        }),
    );
    m.insert(key("id"), Value::from(i.id.as_str()));
    let meta = if i.meta.is_empty() {
        EMPTY_MAP.with(Value::clone)
    } else {
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
        Value::from_map(meta)
    };
    m.insert(key("meta"), meta);
    m.insert(key("name"), Value::from(i.name.as_str()));
    m.insert(key("node"), Value::from(i.node.as_str()));
    m.insert(key("port"), Value::from(i.port));
    m.insert(key("status"), Value::from(i.status.as_str()));
    let tags = if i.tags.is_empty() {
        EMPTY_LIST.with(Value::clone)
    } else {
        Value::from(
            i.tags
                .iter()
                .map(|t| Value::from(t.as_str()))
                .collect::<Vec<_>>(),
        )
    };
    m.insert(key("tags"), tags);
    Value::from_map(m)
}

/// `host:port`, with IPv6 addresses bracketed: `[::1]:8080`.
pub fn addr_port(addr: &str, port: u64) -> String {
    let mut out = String::with_capacity(addr.len() + 8);
    write_addr_port(&mut out, addr, port);
    out
}

/// `addr:port`, with an IPv6 address in brackets.
pub(super) fn write_addr_port(out: &mut String, addr: &str, port: u64) {
    use std::fmt::Write;
    let _ = if addr.contains(':') && !addr.starts_with('[') {
        write!(out, "[{addr}]:{port}")
    } else {
        write!(out, "{addr}:{port}")
    };
}
