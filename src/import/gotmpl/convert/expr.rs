//! Go pipelines, commands and operands to Tera expressions: `x | f a` is desugared to
//! `f a x` before the call is mapped, and `.Field` paths follow the value's kind.

use super::*;

impl Conv<'_> {
    pub(super) fn pipe(&mut self, pipe: &Pipe) -> Result<Val, Fail> {
        let mut acc: Option<Val> = None;
        for cmd in &pipe.cmds {
            acc = Some(self.cmd(cmd, acc)?);
        }
        acc.ok_or(Fail {
            at: pipe.span.start,
            why: "empty pipeline".into(),
        })
    }

    pub(super) fn cmd(&mut self, cmd: &Cmd, piped: Option<Val>) -> Result<Val, Fail> {
        let first = &cmd.args[0];
        if let ArgKind::Ident(name) = &first.kind
            && !matches!(name.as_str(), "true" | "false" | "nil")
        {
            let mut args = Vec::new();
            for a in &cmd.args[1..] {
                args.push((self.operand(a)?, a.span.start));
            }
            if let Some(p) = piped {
                args.push((p, first.span.start));
            }
            return self.call(name, args, first.span.start);
        }
        if cmd.args.len() > 1 || piped.is_some() {
            // A method call (`scratch.Set "k" "v"`): what the receiver is decides the reason.
            if let ArgKind::Sub(..) = &first.kind {
                self.operand(first)?;
            }
            return fail(
                first.span.start,
                "an argument given to a value that is not a function",
            );
        }
        self.operand(first)
    }

    pub(super) fn operand(&mut self, arg: &Arg) -> Result<Val, Fail> {
        let at = arg.span.start;
        match &arg.kind {
            ArgKind::Dot(fields) => {
                let Some(dot) = self.dot().cloned() else {
                    return fail(
                        at,
                        "`.` is empty at the top of a consul-template template (there is no data); use it inside range or with",
                    );
                };
                self.fields(dot, fields, at)
            }
            ArgKind::Var(name, fields) => {
                if name.is_empty() {
                    return fail(at, "`$` (the template's data) is empty in consul-template");
                }
                let Some((_, tera, kind)) = self.lookup(name) else {
                    return fail(at, format!("${name} is not declared"));
                };
                let v = Val::new(tera, Prec::Atom, kind);
                self.fields(v, fields, at)
            }
            ArgKind::Ident(w) => match w.as_str() {
                "true" | "false" => Ok(Val::new(w.clone(), Prec::Atom, Kind::Bool)),
                "nil" => fail(at, "nil has no Tera equivalent"),
                other => self.call(other, Vec::new(), at),
            },
            ArgKind::Str(s) => Ok(str_val(s)),
            ArgKind::Char(c) => Ok(Val::new(u32::from(*c).to_string(), Prec::Atom, Kind::Num)),
            ArgKind::Number(n) => {
                let clean = n.replace('_', "");
                let parsed = if let Some(hex) = clean.strip_prefix("0x") {
                    i64::from_str_radix(hex, 16).ok().map(|v| v.to_string())
                } else if clean.parse::<i64>().is_ok() || clean.parse::<f64>().is_ok() {
                    Some(clean.trim_start_matches('+').to_string())
                } else {
                    None
                };
                match parsed {
                    Some(p) => Ok(Val::new(p, Prec::Atom, Kind::Num)),
                    None => fail(at, format!("the number {n} has no Tera form")),
                }
            }
            ArgKind::Sub(pipe, fields) => {
                let v = self.pipe(pipe)?;
                if fields.is_empty() {
                    return Ok(v);
                }
                if v.prec != Prec::Atom || v.s.starts_with('(') {
                    return fail(
                        at,
                        "a field of a parenthesized pipeline: Tera reads fields of names only; assign it to a variable first",
                    );
                }
                self.fields(v, fields, at)
            }
        }
    }

    /// Applies `.Field.sub` to a value.
    pub(super) fn fields(&mut self, mut v: Val, fields: &[String], at: usize) -> Result<Val, Fail> {
        let mut in_meta = false;
        for f in fields {
            if v.prec != Prec::Atom {
                return fail(at, format!("field .{f} of a computed value"));
            }
            if v.kind == Kind::Meta {
                let access = if is_ident(f) {
                    format!("{}.{f}", v.s)
                } else {
                    format!("{}[{}]", v.s, tera_str(f))
                };
                v = Val::new(access, Prec::Atom, Kind::Str);
                in_meta = true;
                continue;
            }
            match v.kind {
                Kind::Instance | Kind::Service | Kind::Node | Kind::Pair | Kind::Any => {}
                _ => return fail(at, format!("field .{f} of a value that has no fields")),
            }
            match field(f) {
                Ok((name, kind)) => v = Val::new(format!("{}.{name}", v.s), Prec::Atom, kind),
                Err(why) => return fail(at, format!("field .{f}: {why}")),
            }
        }
        if in_meta && !self.opts.error_on_missing_key {
            // Go renders a missing map key as nothing useful; an empty string is what a
            // template author expects (error_on_missing_key = true keeps Tera's error).
            v = v.filter("default(value=\"\")", Kind::Str);
        }
        Ok(v)
    }
}
