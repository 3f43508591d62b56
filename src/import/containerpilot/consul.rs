//! The `consul` address and token, and the Consul registration options of a service
//! (`interfaces`, `port`, `consul` block) shared by v2 services and v3 jobs.

use super::*;

pub(super) fn consul(ctx: &mut Ctx, top: &Obj, plan: &mut Plan) {
    let Some(n) = top.get("consul") else {
        return;
    };
    let mut cat = Catalog {
        origin: format!("from {}: consul", ctx.file.display()),
        ..Catalog::default()
    };
    match &n.value {
        Value::Str(s) => cat.address = Some(s.clone()),
        Value::Map(_) => {
            if let Some(c) = Obj::new(n, "consul") {
                let address = ctx.string(&c, "address");
                let scheme = ctx.string(&c, "scheme");
                cat.address = match (address, scheme) {
                    (Some(a), Some(s)) if !a.contains("://") => Some(format!("{s}://{a}")),
                    (a, _) => a,
                };
                cat.token = ctx.string(&c, "token");
                if let Some(t) = c.get("tls").and_then(|t| Obj::new(t, "consul.tls")) {
                    cat.tls.ca = ctx.string(&t, "cafile");
                    cat.tls.cert = ctx.string(&t, "clientcert");
                    cat.tls.key = ctx.string(&t, "clientkey");
                    cat.tls.server_name = ctx.string(&t, "servername");
                    cat.tls.verify = ctx.boolean(&t, "verify");
                    if let Some(p) = t.get("capath") {
                        ctx.unmapped(p, "consul.tls.capath", "no CA directory in rewire.toml: set CONSUL_CAPATH in rewire's environment, or name one file as [catalog.tls] ca");
                    }
                    ctx.rest(&t, "not a TLS setting rewire knows");
                }
                ctx.rest(&c, "not a Consul setting rewire knows");
            }
        }
        _ => ctx.unmapped(
            n,
            "consul",
            format!("expected an address, found {}", n.type_name()),
        ),
    }
    plan.catalog = Some(cat);
}

/// `interfaces`: rewire takes one interface name or a literal address.
pub(super) fn interfaces(ctx: &mut Ctx, obj: &Obj, svc: &mut Service) {
    let Some(n) = obj.get("interfaces") else {
        return;
    };
    let path = obj.child("interfaces");
    let Some(list) = ctx.strings(obj, "interfaces") else {
        return;
    };
    // An interface name (`eth0`, `eth0:inet`): rewire takes its first IPv4 address.
    let name = |e: &str| {
        let iface = e.strip_suffix(":inet").unwrap_or(e);
        (!iface.is_empty()
            && !iface.contains(['[', '/', ':'])
            && iface != "inet"
            && iface != "inet6")
            .then(|| iface.to_string())
    };
    match list.as_slice() {
        [] => {}
        [only] => {
            if let Some(addr) = only.strip_prefix("static:") {
                svc.address = Some(addr.to_string());
            } else if only == "inet" {
                // rewire's default: the first non-loopback IPv4 address.
            } else if let Some(iface) = name(only) {
                svc.interface = vec![iface];
            } else {
                ctx.unmapped(n, &path, format!("{only:?}: rewire takes an interface name (eth0, its first IPv4 address), static:ADDRESS or inet; IPv6, CIDR and index forms are not supported"));
            }
        }
        // A fallback list (["eth1", "eth0"]: the same image on Triton and on plain Docker):
        // rewire tries names in order too.
        many => match many
            .iter()
            .map(|e| match e.as_str() {
                "inet" => Some(crate::host::ANY_IPV4.to_string()),
                e => name(e),
            })
            .collect::<Option<Vec<String>>>()
        {
            Some(names) => svc.interface = names,
            None => ctx.unmapped(
                n,
                &path,
                format!("{many:?}: rewire tries a list of interface names (and inet, any IPv4) in order; static:, IPv6, CIDR and index entries can only be given alone"),
            ),
        },
    }
}

/// The Consul registration options of a service or job.
pub(super) fn consul_options(ctx: &mut Ctx, obj: &Obj, svc: &mut Service) {
    let Some(c) = obj
        .get("consul")
        .and_then(|n| Obj::new(n, &obj.child("consul")))
    else {
        return;
    };
    if let Some(d) = ctx.duration(&c, "deregisterCriticalServiceAfter") {
        svc.deregister_after = Some(d);
    }
    if let Some(n) = c.get("enableTagOverride") {
        ctx.unmapped(
            n,
            &c.child("enableTagOverride"),
            "not supported: rewire registers the tags it is given",
        );
    }
    ctx.rest(&c, "not a Consul registration option rewire knows");
}

pub(super) fn port(ctx: &mut Ctx, obj: &Obj) -> Option<String> {
    let n = obj.get("port")?;
    match &n.value {
        Value::Num(s) | Value::Str(s) => Some(s.clone()),
        _ => {
            ctx.unmapped(n, &obj.child("port"), "expected a port number");
            None
        }
    }
}
