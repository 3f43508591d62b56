//! consul-template's functions to rewire's: catalog queries (`service`, `key`, `ls`, ...)
//! with their `tag.name@dc|status` query strings, and the string and comparison helpers.

use super::*;

impl Conv<'_> {
    pub(super) fn call(
        &mut self,
        name: &str,
        args: Vec<(Val, usize)>,
        at: usize,
    ) -> Result<Val, Fail> {
        let n = args.len();
        let want = |count: std::ops::RangeInclusive<usize>| -> Result<(), Fail> {
            if count.contains(&n) {
                Ok(())
            } else {
                fail(
                    at,
                    format!(
                        "{name} takes {} argument(s), got {n}",
                        if count.start() == count.end() {
                            count.start().to_string()
                        } else {
                            format!("{} to {}", count.start(), count.end())
                        }
                    ),
                )
            }
        };
        let a = |i: usize| args[i].0.clone();
        match name {
            "service" => {
                want(1..=2)?;
                self.service(&args, at)
            }
            "services" => {
                want(0..=1)?;
                match args.first().map(|(v, _)| v.lit.clone()) {
                    None => Ok(Val::new("services()", Prec::Atom, Kind::Services)),
                    Some(Some(dc)) if dc.is_empty() => {
                        Ok(Val::new("services()", Prec::Atom, Kind::Services))
                    }
                    Some(Some(dc)) => {
                        let dc = dc.trim_start_matches('@');
                        Ok(Val::new(
                            format!("services(dc={})", tera_str(dc)),
                            Prec::Atom,
                            Kind::Services,
                        ))
                    }
                    Some(None) => fail(at, "services with a computed datacenter"),
                }
            }
            "key" | "keyOrDefault" => {
                want(if name == "key" { 1..=1 } else { 2..=2 })?;
                let path = kv_path(&a(0));
                if name == "key" {
                    Ok(Val::new(format!("key({path})"), Prec::Atom, Kind::Str))
                } else {
                    // consul-template also uses the default for a key that exists but is
                    // empty; `default(boolean=true)` does the same.
                    let d = a(1);
                    Ok(Val::new(
                        format!(
                            "key({path}, default={}) | default(value={}, boolean=true)",
                            d.s, d.s
                        ),
                        Prec::Filter,
                        Kind::Str,
                    ))
                }
            }
            "ls" | "safeLs" | "tree" | "safeTree" => {
                want(1..=1)?;
                let path = kv_path(&a(0)).replacen("path=", "prefix=", 1);
                if name.starts_with("safe") {
                    self.problem(
                        at,
                        format!("{name}: rewire renders an empty list for a missing prefix instead of refusing to render; check the template can take that"),
                        true,
                    );
                }
                if matches!(name, "ls" | "safeLs") {
                    // Top-level keys only, as consul-template's ls.
                    Ok(Val::new(
                        format!("[kv for kv in keys({path}) if kv.key and \"/\" not in kv.key]"),
                        Prec::Atom,
                        Kind::Pairs,
                    ))
                } else {
                    // consul-template's tree skips the prefix's own key (empty relative path).
                    Ok(Val::new(
                        format!("[kv for kv in keys({path}) if kv.key]"),
                        Prec::Atom,
                        Kind::Pairs,
                    ))
                }
            }
            "env" => {
                want(1..=1)?;
                // consul-template renders an unset variable as "".
                Ok(Val::new(
                    format!("env(name={}, default=\"\")", a(0).s),
                    Prec::Atom,
                    Kind::Str,
                ))
            }
            "eq" => {
                if n < 2 {
                    return fail(at, "eq takes at least 2 arguments");
                }
                let first = a(0).operand();
                let alts: Vec<String> = args[1..]
                    .iter()
                    .map(|(v, _)| format!("{first} == {}", v.operand()))
                    .collect();
                Ok(Val::new(alts.join(" or "), Prec::Op, Kind::Bool))
            }
            "ne" | "lt" | "le" | "gt" | "ge" => {
                want(2..=2)?;
                let op = match name {
                    "ne" => "!=",
                    "lt" => "<",
                    "le" => "<=",
                    "gt" => ">",
                    _ => ">=",
                };
                Ok(Val::new(
                    format!("{} {op} {}", a(0).operand(), a(1).operand()),
                    Prec::Op,
                    Kind::Bool,
                ))
            }
            "and" | "or" => {
                if n < 1 {
                    return fail(at, format!("{name} takes at least 1 argument"));
                }
                let parts: Vec<String> = args.iter().map(|(v, _)| v.operand()).collect();
                let kind = if args.iter().all(|(v, _)| v.kind == Kind::Bool) {
                    Kind::Bool
                } else {
                    Kind::Any
                };
                Ok(Val::new(parts.join(&format!(" {name} ")), Prec::Op, kind))
            }
            "not" => {
                want(1..=1)?;
                Ok(Val::new(
                    format!("not {}", a(0).operand()),
                    Prec::Op,
                    Kind::Bool,
                ))
            }
            "printf" => {
                if n < 1 {
                    return fail(at, "printf takes a format");
                }
                self.printf(&args, at)
            }
            "print" => {
                want(1..=1)?;
                Ok(a(0))
            }
            "contains" | "in" => {
                want(2..=2)?;
                // contains NEEDLE HAYSTACK (pipe-friendly); in HAYSTACK NEEDLE.
                let (needle, hay) = if name == "contains" {
                    (a(0), a(1))
                } else {
                    (a(1), a(0))
                };
                Ok(Val::new(
                    format!("{} in {}", needle.operand(), hay.operand()),
                    Prec::Op,
                    Kind::Bool,
                ))
            }
            "join" => {
                want(2..=2)?;
                Ok(a(1).filter(&format!("join(sep={})", a(0).s), Kind::Str))
            }
            "split" => {
                want(2..=2)?;
                // consul-template trims the text first, and an empty text is an empty list
                // (Tera's split would give one empty string).
                let text = a(1).receiver();
                Ok(Val::new(
                    format!(
                        "(({text} | trim | split(pat={})) if ({text} | trim) else [])",
                        a(0).s
                    ),
                    Prec::Atom,
                    Kind::Strings,
                ))
            }
            "replaceAll" => {
                want(3..=3)?;
                Ok(a(2).filter(
                    &format!("replace(from={}, to={})", a(0).s, a(1).s),
                    Kind::Str,
                ))
            }
            "regexReplaceAll" => {
                want(3..=3)?;
                Ok(a(2).filter(
                    &format!("regex_replace(pattern={}, rep={})", a(0).s, a(1).s),
                    Kind::Str,
                ))
            }
            "regexMatch" => {
                want(2..=2)?;
                Ok(Val::new(
                    format!("{} is matching(pat={})", a(1).receiver(), a(0).s),
                    Prec::Op,
                    Kind::Bool,
                ))
            }
            "toLower" | "toUpper" | "toTitle" | "trimSpace" => {
                want(1..=1)?;
                let f = match name {
                    "toLower" => "lower",
                    "toUpper" => "upper",
                    "toTitle" => "title",
                    _ => "trim",
                };
                Ok(a(0).filter(f, Kind::Str))
            }
            "len" => {
                want(1..=1)?;
                Ok(unsorted(a(0)).filter("length", Kind::Num))
            }
            "toJSON" | "toJSONPretty" => {
                want(1..=1)?;
                let f = if name == "toJSON" {
                    "json_encode"
                } else {
                    "json_encode(pretty=true)"
                };
                Ok(a(0).filter(f, Kind::Str))
            }
            "base64Encode" | "base64Decode" => {
                want(1..=1)?;
                let f = if name == "base64Encode" {
                    "b64_encode"
                } else {
                    "b64_decode"
                };
                Ok(a(0).filter(f, Kind::Str))
            }
            "index" => {
                if n < 2 {
                    return fail(at, "index takes a collection and at least one index");
                }
                let mut v = a(0);
                let was_meta = v.kind == Kind::Meta;
                for (k, _) in &args[1..] {
                    if v.prec != Prec::Atom {
                        return fail(
                            at,
                            "index of a computed value; assign it to a variable first",
                        );
                    }
                    v = Val::new(format!("{}[{}]", v.s, k.s), Prec::Atom, v.kind.element());
                }
                if was_meta {
                    // Go's index of a missing map key is the zero value.
                    v = v.filter("default(value=\"\")", Kind::Str);
                }
                Ok(v)
            }
            "add" | "subtract" | "multiply" | "modulo" => {
                want(2..=2)?;
                // consul-template's math takes the pipe-friendly order: `subtract B A` is A - B.
                let op = match name {
                    "add" => "+",
                    "subtract" => "-",
                    "multiply" => "*",
                    _ => "%",
                };
                Ok(Val::new(
                    format!("{} {op} {}", a(1).operand(), a(0).operand()),
                    Prec::Op,
                    Kind::Num,
                ))
            }
            "loop" => {
                want(1..=2)?;
                let call = if n == 1 {
                    format!("range(end={})", a(0).s)
                } else {
                    format!("range(start={}, end={})", a(0).s, a(1).s)
                };
                Ok(Val::new(call, Prec::Atom, Kind::Any))
            }
            "nodes" => {
                want(0..=1)?;
                match args.first().map(|(v, _)| v.lit.clone()) {
                    None => Ok(Val::new("nodes()", Prec::Atom, Kind::Nodes)),
                    Some(Some(dc)) => match dc.trim_start_matches('@') {
                        "" => Ok(Val::new("nodes()", Prec::Atom, Kind::Nodes)),
                        dc => Ok(Val::new(
                            format!("nodes(dc={})", tera_str(dc)),
                            Prec::Atom,
                            Kind::Nodes,
                        )),
                    },
                    Some(None) => fail(at, "nodes with a computed datacenter"),
                }
            }
            "datacenters" => {
                // `datacenters true` leaves out the ones that cannot be reached; rewire
                // lists what the agent knows.
                want(0..=1)?;
                if n == 1 {
                    self.problem(
                        at,
                        "datacenters true: rewire lists every datacenter the agent knows, \
                         reachable or not",
                        false,
                    );
                }
                Ok(Val::new("datacenters()", Prec::Atom, Kind::Strings))
            }
            "node" => fail(
                at,
                "node: rewire has no node() function (one node's services); use nodes() or \
                 service() and filter by .node",
            ),
            "secret" | "secrets" | "pkiCert" => fail(
                at,
                format!(
                    "{name}: Vault is not supported by rewire, and will not be; keep a Vault \
                     agent (or consul-template) for secrets beside rewire"
                ),
            ),
            "byTag" | "byKey" | "byMeta" | "explode" | "explodeMap" | "parseJSON" | "parseInt"
            | "parseBool" | "parseFloat" | "parseUint" | "timestamp" | "file" | "plugin"
            | "scratch" | "executeTemplate" | "connect" | "caRoots" | "caLeaf" | "keyExists"
            | "containsAll" | "containsAny" | "containsNone" | "containsNotAll" | "divide"
            | "minimum" | "maximum" | "sockaddr" | "writeToFile" | "mergeMap" | "toYAML"
            | "toTOML" | "indent" | "trim" | "trimPrefix" | "trimSuffix" | "spew_dump"
            | "spew_sdump" | "spew_printf" | "md5sum" | "sha256Hex" | "html" | "js"
            | "urlquery" | "slice" | "call" | "nomadService" | "nomadServices" | "nomadVar"
            | "nomadVarList" | "nomadVarExists" => fail(
                at,
                format!(
                    "{name} has no translation to rewire's Tera functions yet; rewrite this part by hand"
                ),
            ),
            other if other.starts_with("sprig_") => fail(
                at,
                format!(
                    "{other}: Sprig functions are not translated; most have a Tera filter of a similar name"
                ),
            ),
            other => fail(
                at,
                format!("unknown function `{other}` (consul-template does not define it either)"),
            ),
        }
    }

    pub(super) fn service(&mut self, args: &[(Val, usize)], at: usize) -> Result<Val, Fail> {
        let mut kwargs = Vec::new();
        let query = &args[0].0;
        let status_arg = args.get(1).map(|(v, _)| v.lit.clone());
        match &query.lit {
            Some(q) => {
                let ct = crate::render::functions::parse_ct_query(q).or_else(|e| fail(at, e))?;
                let filter = match (ct.status.map(str::to_string), status_arg) {
                    (f, None) => f,
                    (None, Some(Some(s))) => Some(s),
                    (Some(_), Some(_)) => {
                        return fail(at, "two status filters (in the query and as an argument)");
                    }
                    (None, Some(None)) => return fail(at, "a computed status filter"),
                };
                if ct.name.is_empty() {
                    return fail(at, format!("service query {q:?} has no service name"));
                }
                kwargs.push(format!("name={}", tera_str(ct.name)));
                if let Some(t) = ct.tag {
                    kwargs.push(format!("tag={}", tera_str(t)));
                }
                if let Some(f) = filter {
                    let mut states: Vec<&str> = f
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .collect();
                    states.sort_unstable();
                    states.dedup();
                    for s in &states {
                        if !matches!(*s, "passing" | "warning" | "critical" | "any") {
                            return fail(
                                at,
                                format!(
                                    "status filter {s:?}: rewire knows passing, warning, critical and any"
                                ),
                            );
                        }
                    }
                    if states != ["passing"] && !states.is_empty() {
                        kwargs.push(format!("status={}", tera_str(&states.join(","))));
                    }
                }
                if let Some(dc) = ct.dc {
                    kwargs.push(format!("dc={}", tera_str(dc)));
                }
            }
            // A service's `.Name` inside `range services`: a name.
            None if query.prec == Prec::Atom && query.s.ends_with(".name") => {
                kwargs.push(format!("name={}", query.s));
                match status_arg {
                    None => {}
                    Some(Some(s)) if s == "passing" => {}
                    Some(Some(s)) => kwargs.push(format!("status={}", tera_str(&s))),
                    Some(None) => return fail(at, "a computed status filter"),
                }
            }
            // Any other computed query, such as `printf "web@%s" $dc` or `env "SVC"`:
            // consul-template reads its tag, dc and status at run time, and so does `query`.
            None => {
                let q = match status_arg {
                    None => query.s.clone(),
                    Some(Some(s)) if s == "passing" => query.s.clone(),
                    Some(Some(s)) => {
                        format!("{} ~ {}", query.operand(), tera_str(&format!("|{s}")))
                    }
                    Some(None) => return fail(at, "a computed status filter"),
                };
                kwargs.push(format!("query={q}"));
            }
        }
        Ok(Val::new(
            format!("service({}){SORTED}", kwargs.join(", ")),
            Prec::Filter,
            Kind::Instances,
        ))
    }

    /// `printf` with %s, %d and %v becomes string concatenation.
    pub(super) fn printf(&mut self, args: &[(Val, usize)], at: usize) -> Result<Val, Fail> {
        let Some(format) = args[0].0.lit.clone() else {
            return fail(at, "printf with a computed format");
        };
        let mut parts: Vec<String> = Vec::new();
        let mut literal = String::new();
        let mut next = 1;
        let mut chars = format.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                literal.push(c);
                continue;
            }
            match chars.next() {
                Some('%') => literal.push('%'),
                Some('s' | 'd' | 'v') => {
                    let Some((v, _)) = args.get(next) else {
                        return fail(at, "printf has more verbs than arguments");
                    };
                    next += 1;
                    if !literal.is_empty() {
                        parts.push(tera_str(&literal));
                        literal.clear();
                    }
                    parts.push(v.printed().or_else(|why| fail(at, why))?.operand());
                }
                Some(other) => {
                    return fail(
                        at,
                        format!(
                            "printf verb %{other}: only %s, %d and %v translate (write a Tera filter for the rest)"
                        ),
                    );
                }
                None => return fail(at, "printf format ends with %"),
            }
        }
        if next != args.len() {
            return fail(at, "printf has more arguments than verbs");
        }
        if !literal.is_empty() {
            parts.push(tera_str(&literal));
        }
        Ok(match parts.len() {
            0 => str_val(""),
            1 if args.len() == 1 => str_val(&format.replace("%%", "%")),
            1 => Val::new(format!("{} ~ \"\"", parts[0]), Prec::Op, Kind::Str),
            _ => Val::new(parts.join(" ~ "), Prec::Op, Kind::Str),
        })
    }
}

/// `path="..."` (and `dc=...`) for a key query such as `"app/db@dc2"`.
fn kv_path(v: &Val) -> String {
    match &v.lit {
        Some(lit) => match lit.split_once('@') {
            Some((p, dc)) => format!("path={}, dc={}", tera_str(p), tera_str(dc)),
            None => format!("path={}", tera_str(lit)),
        },
        None => format!("path={}", v.s),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{checked, text};

    #[test]
    fn service_ranges_keep_consul_templates_order_and_fields() {
        assert_eq!(
            text("{{ range service \"web\" }}server {{ .Address }}:{{ .Port }};\n{{ end }}"),
            "{% for s in service(name=\"web\") | sort(attribute=\"id\") | sort(attribute=\"node\") %}server {{ s.address }}:{{ s.port }};\n{% endfor %}"
        );
        assert_eq!(
            text(
                "{{ range $i, $s := service \"v2.web|passing,warning\" }}{{ $i }}={{ $s.ID }}{{ end }}"
            ),
            "{% for s in service(name=\"web\", tag=\"v2\", status=\"passing,warning\") | sort(attribute=\"id\") | sort(attribute=\"node\") %}{% set i = loop.index0 %}{{ i }}={{ s.id }}{% endfor %}"
        );
        // The two-argument form, and a computed name inside `range services`.
        assert_eq!(
            text(
                "{{ range services }}{{ range service .Name \"any\" }}{{ .Node }}{{ end }}{{ end }}"
            ),
            "{% for svc in services() %}{% for s in service(name=svc.name, status=\"any\") | sort(attribute=\"id\") | sort(attribute=\"node\") %}{{ s.node }}{% endfor %}{% endfor %}"
        );
        // A query built at run time keeps consul-template's reading of it (found by a
        // migration hunt: it used to be taken as a plain name, and rendered nothing).
        assert_eq!(
            text(
                "{{ range datacenters }}{{ range service (printf \"web@%s\" .) }}{{ .ID }}{{ end }}{{ end }}"
            ),
            "{% for tag in datacenters() %}{% for s in service(query=\"web@\" ~ tag) | sort(attribute=\"id\") | sort(attribute=\"node\") %}{{ s.id }}{% endfor %}{% endfor %}"
        );
        assert_eq!(
            text("{{ range service (env \"SVC\") \"any\" }}{{ .ID }}{{ end }}"),
            "{% for s in service(query=env(name=\"SVC\", default=\"\") ~ \"|any\") | sort(attribute=\"id\") | sort(attribute=\"node\") %}{{ s.id }}{% endfor %}"
        );
    }

    #[test]
    fn functions_map_to_tera_forms() {
        let cases = [
            (
                "{{ keyOrDefault \"app/x\" \"d\" }}",
                "{{ key(path=\"app/x\", default=\"d\") | default(value=\"d\", boolean=true) }}",
            ),
            (
                "{{ range ls \"app\" }}{{ .Key }}={{ .Value }}{{ end }}",
                "{% for kv in [kv for kv in keys(prefix=\"app\") if kv.key and \"/\" not in kv.key] %}{{ kv.key }}={{ kv.value }}{% endfor %}",
            ),
            (
                "{{ range tree \"app\" }}{{ .Key }}{{ end }}",
                "{% for kv in [kv for kv in keys(prefix=\"app\") if kv.key] %}{{ kv.key }}{% endfor %}",
            ),
            (
                "{{ range split \",\" (keyOrDefault \"csv\" \"\") }}[{{ . }}]{{ end }}",
                "{% for tag in ((key(path=\"csv\", default=\"\") | default(value=\"\", boolean=true) | trim | split(pat=\",\")) if (key(path=\"csv\", default=\"\") | default(value=\"\", boolean=true) | trim) else []) %}[{{ tag }}]{% endfor %}",
            ),
            (
                "{{ printf \"%s:%d\" \"a\" 80 }}",
                "{{ \"a\" ~ \":\" ~ 80 }}",
            ),
            // %v of a list prints it as Go does, like a bare {{ .Tags }}.
            (
                "{{ range service \"web\" }}{{ printf \"%v\" .Tags }}{{ printf \"t=%s;\" .Tags }}{{ end }}",
                "{% for s in service(name=\"web\") | sort(attribute=\"id\") | sort(attribute=\"node\") %}{{ (\"[\" ~ (s.tags | join(sep=\" \")) ~ \"]\") ~ \"\" }}{{ \"t=\" ~ (\"[\" ~ (s.tags | join(sep=\" \")) ~ \"]\") ~ \";\" }}{% endfor %}",
            ),
            (
                "{{ \"A b\" | toLower | trimSpace }}",
                "{{ \"A b\" | lower | trim }}",
            ),
            (
                "{{ range service \"web\" }}{{ join \",\" .Tags }}{{ if .Tags | contains \"x\" }}!{{ end }}{{ .Tags }}{{ end }}",
                "{% for s in service(name=\"web\") | sort(attribute=\"id\") | sort(attribute=\"node\") %}{{ s.tags | join(sep=\",\") }}{% if \"x\" in s.tags %}!{% endif %}{{ \"[\" ~ (s.tags | join(sep=\" \")) ~ \"]\" }}{% endfor %}",
            ),
            (
                "{{ range service \"web\" }}{{ .ServiceMeta.version }}{{ index .ServiceMeta \"x-y\" }}{{ end }}",
                "{% for s in service(name=\"web\") | sort(attribute=\"id\") | sort(attribute=\"node\") %}{{ s.meta.version | default(value=\"\") }}{{ s.meta[\"x-y\"] | default(value=\"\") }}{% endfor %}",
            ),
            (
                "{{ range $k, $v := (index (service \"web\") 0).ServiceMeta }}{{ $k }}{{ end }}",
                "",
            ),
            (
                "{{ $n := len (service \"web\") }}{{ if gt $n 0 }}{{ $n }}{{ end }}",
                "{% set n = service(name=\"web\") | length %}{% if n > 0 %}{{ n }}{% endif %}",
            ),
            (
                "{{/* note */}}{{- /* trimmed */ -}}",
                "{# note #}{#- trimmed -#}",
            ),
            ("{{ 5 | subtract 2 }}", "{{ 5 - 2 }}"),
        ];
        for (go, want) in cases {
            let c = checked(go);
            if want.is_empty() {
                continue;
            }
            assert!(c.problems.is_empty(), "{go}: {:?}", c.problems);
            assert_eq!(c.text, want, "{go}");
        }
    }

    #[test]
    fn unknown_function_is_a_comment_naming_its_line() {
        let c = checked(
            "upstream x {\n  {{ range service \"web\" | byTag }}\n  {{ end }}\n  {{ frobnicate 1 }}\n}\n",
        );
        assert_eq!(c.problems.len(), 2, "{:?}", c.problems);
        assert_eq!((c.problems[0].line, c.problems[0].col), (2, 28));
        assert!(c.problems[0].what.contains("byTag"), "{:?}", c.problems[0]);
        assert_eq!((c.problems[1].line, c.problems[1].col), (4, 6));
        assert!(c.problems[1].what.contains("unknown function `frobnicate`"));
        assert!(c.problems.iter().all(|p| p.needs_person));
        assert!(
            c.text
                .contains("{# rewire import: line 2 not converted (byTag has no translation"),
            "{}",
            c.text
        );
        assert!(
            c.text
                .contains("{# rewire import: line 4 not converted (unknown function `frobnicate`")
        );
    }

    #[test]
    fn other_datacenters_convert_to_dc_arguments() {
        let c =
            checked("{{ range service \"web@dc2\" }}{{ .Address }}{{ end }}{{ key \"a/b@dc2\" }}");
        assert!(
            c.text.contains("service(name=\"web\", dc=\"dc2\")"),
            "{}",
            c.text
        );
        assert!(
            c.text.contains("key(path=\"a/b\", dc=\"dc2\")"),
            "{}",
            c.text
        );
        assert!(c.problems.is_empty(), "{:?}", c.problems);
    }

    #[test]
    fn nodes_and_datacenters_convert() {
        let c = checked(
            "{{ range nodes }}{{ .Node }} {{ .Address }} {{ .Datacenter }} {{ .TaggedAddresses.wan }} {{ .Meta.rack }}\n{{ end }}\
             {{ range nodes \"@dc2\" }}{{ .Node }}{{ end }}{{ range datacenters }}{{ . }},{{ end }}",
        );
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert!(c.text.contains("for node in nodes()"), "{}", c.text);
        assert!(c.text.contains("nodes(dc=\"dc2\")"), "{}", c.text);
        assert!(c.text.contains("node.tagged_addresses.wan"), "{}", c.text);
        assert!(c.text.contains("datacenters()"), "{}", c.text);
        let c = checked("{{ range datacenters true }}{{ . }}{{ end }}");
        assert_eq!(c.problems.len(), 1, "{:?}", c.problems);
        assert!(!c.problems[0].needs_person);
    }
}
