//! Go template nodes to Tera tags: text, actions, `if`/`with` chains and `range` loops,
//! each opening a scope that says what `.` and the Go variables mean inside it.

use super::*;

impl Conv<'_> {
    pub(super) fn nodes(&mut self, nodes: &[Node]) {
        for n in nodes {
            self.node(n);
        }
    }

    pub(super) fn node(&mut self, node: &Node) {
        match node {
            Node::Text(r) => {
                let src = self.src;
                self.text(&src[r.clone()]);
            }
            Node::Comment { text, trim } => {
                let l = if trim.left { "-" } else { "" };
                let r = if trim.right { "-" } else { "" };
                let _ = write!(self.out, "{{#{l}{}{r}#}}", text.replace("#}", "# }"));
            }
            Node::Action { pipe, trim, span } => {
                if let Err(f) = self.action(pipe, *trim) {
                    self.comment_out(*trim, span.clone(), f);
                }
            }
            Node::Cond {
                branches,
                otherwise,
                end_trim,
                span,
                ..
            } => self.cond(branches, otherwise.as_ref(), *end_trim, span.clone()),
            Node::Range {
                pipe,
                trim,
                body,
                otherwise,
                end_trim,
                span,
            } => self.range(
                pipe,
                *trim,
                body,
                otherwise.as_ref(),
                *end_trim,
                span.clone(),
            ),
            Node::LoopControl { word, trim } => self.tags(*trim, &[word.to_string()]),
            Node::Unsupported { what, trim, span } => {
                let f = Fail {
                    at: span.start,
                    why: format!(
                        "{what} have no Tera translation here; move the shared part to its own file and {{% include %}} it"
                    ),
                };
                self.comment_out(*trim, span.clone(), f);
            }
        }
    }

    pub(super) fn action(&mut self, pipe: &Pipe, trim: Trim) -> Result<(), Fail> {
        let val = self.pipe(pipe)?;
        if pipe.decl.is_empty() {
            let printed = match val.printed() {
                Ok(v) => v.s,
                Err(why) => return fail(pipe.span.start, why),
            };
            self.print(trim, &printed);
            return Ok(());
        }
        if pipe.decl.len() != 1 {
            return fail(
                pipe.span.start,
                "two variables are declared only in a range",
            );
        }
        let go = &pipe.decl[0];
        if pipe.assign {
            let Some((depth, name, _)) = self.lookup(go) else {
                return fail(
                    pipe.span.start,
                    format!("${go} is assigned before it is declared"),
                );
            };
            let name = name.to_string();
            // Tera's `set` inside a loop is local to the loop; Go's `=` changes the outer
            // variable. `set_global` reaches the top level only.
            let crosses_loop = self.scopes[depth + 1..].iter().any(|s| s.is_loop);
            let word = match (crosses_loop, depth) {
                (false, _) => "set",
                (true, 0) => "set_global",
                (true, _) => {
                    return fail(
                        pipe.span.start,
                        format!(
                            "${go} belongs to an outer loop; Tera cannot assign it from an inner one"
                        ),
                    );
                }
            };
            self.tags(trim, &[format!("{word} {name} = {}", val.s)]);
        } else {
            let name = self.declare(go, val.kind);
            self.tags(trim, &[format!("set {name} = {}", val.s)]);
        }
        Ok(())
    }

    pub(super) fn cond(
        &mut self,
        branches: &[Branch],
        otherwise: Option<&Else>,
        end_trim: Trim,
        span: std::ops::Range<usize>,
    ) {
        // Translate every guard first: if one fails, the whole block stays as it was.
        let mut guards = Vec::new();
        for b in branches {
            match self.pipe(&b.pipe) {
                Ok(v) if b.kind == CondKind::If => guards.push(unsorted(v)),
                Ok(v) => guards.push(v),
                Err(f) => {
                    let trim = Trim {
                        left: branches[0].trim.left,
                        right: end_trim.right,
                    };
                    self.comment_out(trim, span, f);
                    return;
                }
            }
        }
        let mut open_ifs = 1;
        for (i, (b, guard)) in branches.iter().zip(guards).enumerate() {
            let mut parts = Vec::new();
            if i > 0 && b.kind == CondKind::With {
                parts.push("else".to_string());
                open_ifs += 1;
            }
            let mut scope = Scope::default();
            match b.kind {
                CondKind::If if b.pipe.decl.is_empty() => {
                    let word = if i == 0 { "if" } else { "elif" };
                    parts.push(format!("{word} {}", guard.s));
                }
                CondKind::If => {
                    // `if $x := pipeline`: declare, then test.
                    let name = self.declare(&b.pipe.decl[0], guard.kind);
                    if i > 0 {
                        parts.push("else".into());
                        open_ifs += 1;
                    }
                    parts.push(format!("set {name} = {}", guard.s));
                    parts.push(format!("if {name}"));
                }
                CondKind::With => {
                    self.with_count += 1;
                    let name = match b.pipe.decl.first() {
                        Some(go) => self.declare(go, guard.kind),
                        None => self.fresh(&format!("w{}", self.with_count)),
                    };
                    parts.push(format!("set {name} = {}", guard.s));
                    parts.push(format!("if {name}"));
                    scope.dot = Some(Val::new(name, Prec::Atom, guard.kind));
                }
            }
            self.tags(b.trim, &parts);
            self.scoped(scope, &b.body);
        }
        if let Some(e) = otherwise {
            self.tags(e.trim, &["else".to_string()]);
            self.scoped(Scope::default(), &e.body);
        }
        self.tags(end_trim, &vec!["endif".to_string(); open_ifs]);
    }

    pub(super) fn range(
        &mut self,
        pipe: &Pipe,
        trim: Trim,
        body: &[Node],
        otherwise: Option<&Else>,
        end_trim: Trim,
        span: std::ops::Range<usize>,
    ) {
        let val = match self.pipe(pipe) {
            Ok(v) => v,
            Err(f) => {
                let t = Trim {
                    left: trim.left,
                    right: end_trim.right,
                };
                self.comment_out(t, span, f);
                return;
            }
        };
        let mut scope = Scope {
            is_loop: true,
            ..Scope::default()
        };
        self.scopes.push(Scope {
            is_loop: true,
            ..Scope::default()
        });
        let elem_kind = val.kind.element();
        let is_map = val.kind == Kind::Meta;
        let mut parts = Vec::new();
        let (index, elem) = match pipe.decl.as_slice() {
            [] => (None, None),
            [e] => (None, Some(e.as_str())),
            [i, e, ..] => (Some(i.as_str()), Some(e.as_str())),
        };
        let elem_name = match elem {
            Some(go) => self.declare(go, elem_kind),
            None => {
                let n = self.fresh(val.kind.loop_name());
                // Reserve it so inner loops pick another name.
                self.scopes.last_mut().expect("pushed above").vars.push((
                    String::new(),
                    n.clone(),
                    elem_kind,
                ));
                n
            }
        };
        if is_map {
            let key = match index {
                Some(go) => self.declare(go, Kind::Str),
                None => self.fresh("_k"),
            };
            parts.push(format!("for {key}, {elem_name} in {}", val.s));
        } else {
            parts.push(format!("for {elem_name} in {}", val.s));
            if let Some(go) = index {
                let i = self.declare(go, Kind::Num);
                parts.push(format!("set {i} = loop.index0"));
            }
        }
        let declared = self.scopes.pop().expect("pushed above");
        scope.vars = declared.vars;
        scope.dot = Some(Val::new(elem_name, Prec::Atom, elem_kind));
        self.tags(trim, &parts);
        self.scoped(scope, body);
        if let Some(e) = otherwise {
            self.tags(e.trim, &["else".to_string()]);
            self.scoped(Scope::default(), &e.body);
        }
        self.tags(end_trim, &["endfor".to_string()]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::checked;

    #[test]
    fn if_else_if_else_and_comparisons() {
        let c = checked(
            "{{ range service \"web\" }}{{ if and (eq .Port 80 443) (ne .Node \"n1\") }}a{{ else if not (gt .Port 1000) }}b{{ else }}c{{ end }}{{ end }}",
        );
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert!(
            c.text.contains("{% if (s.port == 80 or s.port == 443) and (s.node != \"n1\") %}a{% elif not (s.port > 1000) %}b{% else %}c{% endif %}"),
            "{}",
            c.text
        );
    }

    #[test]
    fn with_binds_dot_and_else_with_nests() {
        let c = checked(
            "{{ with $v := key \"app/v\" }}v={{ $v }}{{ else with env \"V\" }}e={{ . }}{{ else }}none{{ end }}",
        );
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!(
            c.text,
            "{% set v = key(path=\"app/v\") %}{% if v %}v={{ v }}{% else %}{% set w2 = env(name=\"V\", default=\"\") %}{% if w2 %}e={{ w2 }}{% else %}none{% endif %}{% endif %}"
        );
    }

    #[test]
    fn assignment_inside_a_loop_reaches_the_top_level() {
        let c =
            checked("{{ $n := 0 }}{{ range service \"web\" }}{{ $n = add $n 1 }}{{ end }}{{ $n }}");
        assert_eq!(
            c.text,
            "{% set n = 0 %}{% for s in service(name=\"web\") | sort(attribute=\"id\") | sort(attribute=\"node\") %}{% set_global n = 1 + n %}{% endfor %}{{ n }}"
        );
    }
}
