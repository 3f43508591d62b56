//! Entry points for the fuzz targets under `fuzz/` (issue 13). Not an API: hidden from the
//! docs, and nothing in rewire calls it.
//!
//! rewire's inputs come from people (rewire.toml, templates, files to import) and from the
//! network or other processes (dir catalog files, Consul and etcd answers, control socket
//! requests). Each function here takes the fuzzer's bytes, feeds them to one parser the way
//! rewire does, and asserts what a plain "does not panic" would miss: an instance a decoder
//! accepts passes the [`model`](crate::model) checks, a value a catalog accepts is within its
//! cap, an escaped literal interpolates back to itself. They live in the crate rather than in
//! `fuzz/` so that they reach the private decoders without widening rewire's API, and so that
//! a unit test runs the committed seed corpus through them on stable.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::model::{Data, Instance, Query, check_address, check_name};

/// The cap the catalog targets run with: small, so that the fuzzer crosses it often.
const CAP: u64 = 64;

/// Splits `data` at its first newline: a short header (a name, a selector) and the body.
fn header_and_body(data: &[u8]) -> (&str, &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (
            std::str::from_utf8(&data[..i]).unwrap_or(""),
            &data[i + 1..],
        ),
        None => ("", data),
    }
}

/// An environment where some names are set and some are not, always the same way.
fn env(name: &str) -> Option<String> {
    name.len().is_multiple_of(2).then(|| format!("v_{name}"))
}

/// What a catalog hands to templates must pass the checks every backend promises.
fn assert_valid(i: &Instance, what: &str) {
    assert!(
        check_name(&i.name).is_ok(),
        "{what} accepted service name {:?}",
        i.name
    );
    assert!(
        check_name(&i.id).is_ok(),
        "{what} accepted instance id {:?}",
        i.id
    );
    assert!(
        check_address(&i.address).is_ok(),
        "{what} accepted address {:?}",
        i.address
    );
    assert!(i.port > 0, "{what} accepted port 0");
}

/// `rewire.toml` text through the parser and validator: a config or errors, each printable.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = crate::config::parse_str(text, Path::new("/nonexistent/rewire.toml"), &env)
    {
        assert!(
            !errors.0.is_empty(),
            "a refused config names at least one problem"
        );
        for e in &errors.0 {
            let _ = e.to_string();
        }
    }
}

/// A literal made safe for a `rewire.toml` string: `${` becomes `$${`.
pub fn escape_literal(s: &str) -> String {
    s.replace("${", "$${")
}

/// `${VAR}` interpolation, and its round trips: an escaped literal comes back as itself, a
/// substituted value or a default is taken as it is (never interpolated again).
pub fn interpolate(data: &[u8]) {
    use crate::config::interpolate;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = interpolate(text, &env) {
        let _ = e.to_string();
    }
    let escaped = escape_literal(text);
    assert_eq!(
        interpolate(&escaped, &|_| None).as_deref(),
        Ok(text),
        "escaped {escaped:?}"
    );
    assert_eq!(
        interpolate("a${X}b", &|_| Some(text.to_string())),
        Ok(format!("a{text}b"))
    );
    if !text.contains('}') {
        assert_eq!(
            interpolate(&format!("${{UNSET:-{text}}}"), &|_| None).as_deref(),
            Ok(text)
        );
    }
}

/// A dir catalog instance file. The first line is `<service>/<id>` (the file's place), the
/// rest the file's bytes.
pub fn dir_record(data: &[u8]) {
    let (place, body) = header_and_body(data);
    let (service, id) = place.split_once('/').unwrap_or(("web", place));
    if let Ok(instance) = crate::catalog::dir::decode_instance_file(body, service, id) {
        assert_valid(&instance, "dir catalog");
        assert_eq!(instance.name, service);
        assert_eq!(instance.id, id);
    }
}

/// A scratch directory for the targets that need files, one per process.
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("rewire-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory for the fuzz target");
        dir
    })
}

/// The cap on catalog files (`[catalog] max_file`): every dir catalog file, record or key, is
/// read through [`confined::read_regular`](crate::confined::read_regular). The first byte is
/// the cap, the rest the file.
pub fn dir_cap(data: &[u8]) {
    let Some((&cap, body)) = data.split_first() else {
        return;
    };
    let path = scratch().join("file.json");
    std::fs::write(&path, body).expect("write the scratch file");
    let file = std::fs::File::open(&path).expect("open the scratch file");
    let mut buf = Vec::new();
    let read = crate::confined::read_regular(file, u64::from(cap), &mut buf);
    match read {
        Ok(()) => {
            assert!(
                buf.len() <= usize::from(cap),
                "read {} over cap {cap}",
                buf.len()
            );
            assert_eq!(buf, body);
        }
        Err(_) => assert!(
            body.len() > usize::from(cap),
            "refused a file within the cap"
        ),
    }
}

/// The Consul answer decoders. The first line picks the request (`health`, `services`,
/// `kv`, `keys`, `index`, `acl`, `status`), the rest is the body.
pub fn consul(data: &[u8]) {
    use crate::catalog::consul::decode;
    let (which, body) = header_and_body(data);
    match which {
        "health" => {
            if let Ok(list) = decode::health_service("web", body) {
                for i in &list {
                    assert_valid(i, "Consul health");
                    assert_eq!(i.name, "web");
                }
            }
        }
        "services" => {
            if let Ok(list) = decode::catalog_services(body) {
                for s in &list {
                    assert!(check_name(&s.name).is_ok(), "Consul accepted {:?}", s.name);
                }
            }
        }
        "kv" => {
            if let Ok(Some(v)) = decode::kv_key("a/b", body, CAP) {
                assert!(
                    v.contains('\u{FFFD}') || v.len() as u64 <= CAP,
                    "{} > cap",
                    v.len()
                );
            }
        }
        "keys" => {
            if let Ok(list) = decode::kv_keys(body, CAP) {
                for kv in &list {
                    let v = &kv.value;
                    assert!(
                        v.contains('\u{FFFD}') || v.len() as u64 <= CAP,
                        "{} > cap",
                        v.len()
                    );
                }
            }
        }
        "index" => {
            if let Ok(i) = decode::parse_index(std::str::from_utf8(body).ok()) {
                assert!(i >= 1, "an index of 0 must count as 1");
            }
        }
        "acl" => {
            let status = body.first().map_or(200, |&b| 200 + u16::from(b));
            let _ = crate::catalog::consul::register::preflight_verdict(status, body, true);
        }
        _ => {
            // A whole read: status, headers and body through `interpret`, for each query.
            let status = body
                .first()
                .map_or(200, |&b| if b % 2 == 0 { 200 } else { 404 });
            for query in [
                Query::Service("web".into()),
                Query::Services,
                Query::Key("a/b".into()),
                Query::Keys("a".into()),
                Query::Nodes.in_datacenter(Some("dc2".into())),
                Query::Datacenters,
            ] {
                let answer = decode::Answer {
                    status,
                    index: Some(which),
                    known_leader: None,
                    body,
                };
                if let Ok(reply) = decode::interpret(&query, "fuzz", answer, false, CAP) {
                    // The datacenter list carries no index (it cannot block).
                    assert!(reply.index >= 1 || !query.blocks());
                    assert_data(&reply.data, "Consul");
                }
            }
        }
    }
}

fn assert_data(data: &Data, what: &str) {
    match data {
        Data::Instances(list) => list.iter().for_each(|i| assert_valid(i, what)),
        Data::Services(list) => {
            for s in list {
                assert!(
                    check_name(&s.name).is_ok(),
                    "{what} accepted service {:?}",
                    s.name
                );
            }
        }
        Data::Keys(list) => {
            for kv in list {
                let v = &kv.value;
                assert!(
                    v.contains('\u{FFFD}') || v.len() as u64 <= CAP,
                    "{} > cap",
                    v.len()
                );
            }
        }
        Data::Nodes(list) => {
            for n in list {
                assert!(
                    check_name(&n.name).is_ok(),
                    "{what} accepted node {:?}",
                    n.name
                );
                assert!(
                    check_address(&n.address).is_ok()
                        && n.tagged_addresses
                            .values()
                            .all(|a| check_address(a).is_ok()),
                    "{what} accepted node {:?} with address {:?}",
                    n.name,
                    n.address
                );
            }
        }
        Data::Datacenters(list) => {
            for dc in list {
                assert!(check_name(dc).is_ok(), "{what} accepted datacenter {dc:?}");
            }
        }
        Data::Key(Some(v)) => {
            assert!(
                v.contains('\u{FFFD}') || v.len() as u64 <= CAP,
                "{} > cap",
                v.len()
            );
        }
        _ => {}
    }
}

/// The etcd JSON gateway decoders. The first line picks the answer (`range`, `watch`,
/// `grant`, `keepalive`, `auth`, `error`); a range or a watch line's events then go through
/// the mirror, and every instance and value it answers with is checked.
pub fn etcd(data: &[u8]) {
    use crate::catalog::etcd::mirror::{Changes, Mirror};
    use crate::catalog::etcd::wire;
    const BASE: &str = "/rewire/";
    let (which, body) = header_and_body(data);
    let answers = |m: &Mirror| {
        let mut queries = vec![Query::Services, Query::Keys(String::new())];
        if let Ok(Data::Services(list)) = m.answer(&Query::Services) {
            queries.extend(list.into_iter().map(|s| Query::Service(s.name)));
        }
        for q in &queries {
            if let Ok(data) = m.answer(q) {
                assert_data(&data, "etcd");
            }
        }
    };
    match which {
        "range" => {
            if let Ok(range) = wire::decode_range(body) {
                answers(&Mirror::from_kvs(BASE, CAP, range.kvs));
            }
        }
        "watch" => {
            let mut mirror = Mirror::new(BASE, CAP);
            let mut changes = Changes::default();
            for line in body.split(|&b| b == b'\n') {
                if let Ok(wire::WatchMessage::Events { events, .. }) = wire::decode_watch_line(line)
                {
                    for e in events {
                        mirror.apply(e, &mut changes);
                    }
                }
            }
            answers(&mirror);
        }
        "grant" => {
            if let Ok(g) = wire::decode_grant(body) {
                let _ = format!("{g:?}");
            }
        }
        "keepalive" => {
            let _ = wire::decode_keepalive(body);
        }
        "auth" => {
            let _ = wire::decode_authenticate(body);
        }
        _ => {
            let status = body.first().map_or(500, |&b| 400 + u16::from(b));
            let e = wire::decode_error(status, body);
            let _ = (e.to_string(), e.is_denied(), e.is_unavailable());
        }
    }
}

/// A control socket request line.
pub fn control(data: &[u8]) {
    use crate::app::control::Request;
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(req) = Request::parse(line) {
        // What a client sends, the daemon reads back the same.
        assert_eq!(Request::parse(&req.to_line()), Ok(req));
    }
}

/// Template checking as `rewire check` does it: the template text is written to a file, a
/// config naming it is parsed, and the engine loads it. A panic inside Tera is a bug too.
pub fn template(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = scratch();
    std::fs::write(dir.join("t.conf.tera"), text).expect("write the template");
    let config = format!(
        "[catalog]\nbackend = \"dir\"\npath = \"{d}\"\n\n[[template]]\nsource = \"t.conf.tera\"\ndestination = \"{d}/out/t.conf\"\n",
        d = dir.display()
    );
    let config = crate::config::parse_str(&config, &dir.join("rewire.toml"), &env)
        .expect("the fuzz target's own config parses");
    if let Err(errors) =
        crate::render::template::Engine::load(&config.templates, config.catalog.backend.name())
    {
        for e in &errors {
            let _ = e.to_string();
        }
    }
}

/// `rewire import`'s parsers. The first line picks the input: `containerpilot` (a Go
/// template over JSON5), `consul-template.hcl`, `consul-template.json`, or `gotmpl` (a
/// consul-template template to convert); the rest is the file.
pub fn import(data: &[u8]) {
    use crate::import::Kind;
    let (which, body) = header_and_body(data);
    let Ok(src) = std::str::from_utf8(body) else {
        return;
    };
    let translated = match which {
        "containerpilot" => {
            crate::import::translate(Kind::ContainerPilot, Path::new("containerpilot.json5"), src)
        }
        "consul-template.json" => {
            crate::import::translate(Kind::ConsulTemplate, Path::new("config.json"), src)
        }
        "gotmpl" => {
            let opts = crate::import::gotmpl::Options::default();
            if let Ok(converted) = crate::import::gotmpl::convert(src, &opts) {
                let _ = crate::import::gotmpl::check_tera(&converted.text);
            }
            return;
        }
        _ => crate::import::translate(Kind::ConsulTemplate, Path::new("config.hcl"), src),
    };
    match translated {
        Ok((plan, _files, _findings)) => {
            // The config the importer writes is TOML rewire's own parser can read.
            let config = crate::import::render_plan(&plan);
            let parsed =
                crate::config::parse_str(&config, Path::new("/nonexistent/rewire.toml"), &|_| {
                    Some("1".into())
                });
            if let Err(errors) = parsed {
                for e in &errors.0 {
                    assert!(
                        !e.to_string().contains("TOML parse error"),
                        "import wrote TOML rewire cannot read: {e}\n{config}"
                    );
                }
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Target = fn(&[u8]);

    /// Runs every committed seed through its target, so the corpus stays meaningful (and a
    /// regression the fuzzer once found stays fixed) without a nightly toolchain.
    #[test]
    fn the_seed_corpus_runs_clean_through_every_target() {
        let targets: [(&str, Target); 9] = [
            ("config", config),
            ("interpolate", interpolate),
            ("dir_record", dir_record),
            ("dir_cap", dir_cap),
            ("consul", consul),
            ("etcd", etcd),
            ("control", control),
            ("template", template),
            ("import", import),
        ];
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        let mut seeds = 0;
        for (name, target) in targets {
            let Ok(dir) = std::fs::read_dir(root.join(name)) else {
                continue;
            };
            for entry in dir.flatten() {
                let bytes = std::fs::read(entry.path()).unwrap();
                target(&bytes);
                seeds += 1;
            }
        }
        assert!(seeds > 0, "no seeds under {}", root.display());
    }

    #[test]
    fn an_escaped_literal_interpolates_back_to_itself() {
        for s in [
            "", "$", "${", "$${", "$$${x}", "a${B}c", "${A:-d}", "}{$", "€${é}", "$}${",
        ] {
            interpolate(s.as_bytes());
        }
    }
}
