//! `[[template]]`: source, destination, mode, check, reload, runtime, wait, write mode, backup,
//! render limits.
//!
//! Besides each key, the section checks what only makes sense across keys or templates: a
//! temp-file check must mention `{file}`, two templates may not write one destination, a
//! reload to `main` needs a `[main] exec`, a `runtime` needs a `reload` for what it cannot
//! change. Whether the source exists is left to the disk checks of `load`.

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;
use toml::de::DeValue;

use super::load::DiskCheck;
use super::parse::normalize;
use super::walker::{Tbl, Walker, join, line_col};
use super::{
    CheckMode, MainConfig, Reload, RenderLimits, RuntimeApi, SignalTarget, TemplateConfig, Wait,
    WriteMode,
};

impl Walker<'_> {
    pub(super) fn templates(
        &mut self,
        root: &Tbl,
        default_wait: Wait,
        default_limits: RenderLimits,
        main: Option<&MainConfig>,
    ) -> Vec<TemplateConfig> {
        let mut out: Vec<TemplateConfig> = Vec::new();
        let mut dests: Vec<(PathBuf, Range<usize>)> = Vec::new();
        for t in self.tables(root, "template") {
            let source_s =
                self.required_string(&t, "source", "source = \"templates/nginx.conf.tera\"");
            let dest_s =
                self.required_string(&t, "destination", "destination = \"/etc/nginx/nginx.conf\"");
            let source = source_s
                .as_ref()
                .map(|s| normalize(&self.dir.join(s.get_ref())));
            let destination = dest_s
                .as_ref()
                .map(|s| normalize(&self.dir.join(s.get_ref())));
            if let (Some(s), Some(src)) = (&source_s, &source) {
                // Whether it exists is the disk's answer: `load` checks, `parse_str` does not.
                let (line, col) = line_col(self.src, s.span().start);
                self.disk.push(DiskCheck::TemplateSource {
                    line,
                    col,
                    path: src.clone(),
                });
            }
            let name = self
                .string(&t, "name")
                .map(Spanned::into_inner)
                .or_else(|| {
                    source.as_ref().and_then(|s| {
                        s.file_name().map(|n| {
                            let n = n.to_string_lossy();
                            n.strip_suffix(".tera").unwrap_or(&n).to_string()
                        })
                    })
                });
            let perms = self.perms(&t);
            let check_mode = self.choice(
                &t,
                "check_mode",
                &[("temp", CheckMode::Temp), ("swap", CheckMode::Swap)],
                CheckMode::Temp,
                "check_mode",
                "use \"temp\" (check the rendered file before it replaces the destination) or \"swap\" (put it in place, check the whole config, restore on failure)",
            );
            let check = self.command(&t, "check", Duration::from_secs(30));
            if let Some(c) = &check
                && check_mode == CheckMode::Temp
                && !c.program.mentions_file()
            {
                let span = t.key_span("check").unwrap_or(t.span.clone());
                self.error(
                    span,
                    "`check` does not mention {file}, so it would not check the new file",
                    "add {file} where the command takes the config (e.g. [\"nginx\", \"-t\", \"-c\", \"{file}\"]), or set check_mode = \"swap\" to check the real config after swapping",
                );
            }
            let reload = self.reload(&t, main);
            let runtime = self.runtime(&t);
            if runtime.is_some()
                && reload.is_none()
                && t.get("reload").is_none()
                && let Some(span) = t.key_span("runtime")
            {
                self.error(
                    span,
                    "`runtime` needs a `reload` for the changes the Runtime API cannot make (a new backend, changed settings)",
                    "add e.g. reload = { haproxy_master = \"/run/haproxy-master.sock\" } (HAProxy run with -W -S /run/haproxy-master.sock)",
                );
            }
            let wait = self.wait(&t, "wait", default_wait);
            let write = self.choice(
                &t,
                "write",
                &[("atomic", WriteMode::Atomic), ("in-place", WriteMode::InPlace)],
                WriteMode::Atomic,
                "write mode",
                "use \"atomic\" (default: temp file + rename) or \"in-place\" (for bind-mounted files that cannot be renamed over)",
            );
            let backup = self.boolean(&t, "backup").unwrap_or(false);
            let limits = self.render_limits(&t, default_limits);
            self.finish(&t, TEMPLATE_KEYS);
            if let (Some(d), Some(ds)) = (&destination, &dest_s) {
                if let Some((_, first)) = dests.iter().find(|(p, _)| p == d) {
                    let (line, _) = line_col(self.src, first.start);
                    self.error(
                        ds.span(),
                        format!("destination {} is already written by the template at line {line}", d.display()),
                        "two templates cannot write one file: merge them, or render one into the other with {% include %}",
                    );
                }
                dests.push((d.clone(), ds.span()));
            }
            let (Some(source), Some(destination), Some(name)) = (source, destination, name) else {
                continue;
            };
            if out.iter().any(|o| o.name == name) {
                self.error(
                    t.span.clone(),
                    format!("two templates are named {name:?}"),
                    "give one of them `name = \"...\"` (used by `rewire render --template NAME`)",
                );
            }
            out.push(TemplateConfig {
                name,
                source,
                destination,
                perms,
                check,
                check_mode,
                reload,
                wait,
                write,
                backup,
                runtime,
                limits,
            });
        }
        // A template written over its own source (or another's) is gone after one render.
        for (d, span) in &dests {
            if let Some(t) = out.iter().find(|t| same_file(&t.source, d)) {
                self.error(
                    span.clone(),
                    format!(
                        "destination {} is the source of template {:?}: one render would replace the template with its output",
                        d.display(),
                        t.name
                    ),
                    "write the rendered file somewhere else",
                );
            }
        }
        out
    }

    /// `runtime = { haproxy = "/run/haproxy/admin.sock" }`.
    fn runtime(&mut self, t: &Tbl) -> Option<RuntimeApi> {
        let v = t.get("runtime")?;
        let DeValue::Table(map) = v.get_ref() else {
            self.type_error(
                v.span(),
                t,
                "runtime",
                "a table such as { haproxy = \"/run/haproxy/admin.sock\" }",
                v.get_ref(),
            );
            return None;
        };
        let sub = Tbl::new(map, v.span(), &join(&t.name, "runtime"));
        let socket = self.path(&sub, "haproxy");
        self.finish(&sub, &["haproxy"]);
        match socket {
            Some(socket) => Some(RuntimeApi::Haproxy { socket }),
            None => {
                if map.is_empty() {
                    self.error(
                        v.span(),
                        "`runtime` names no program",
                        "write runtime = { haproxy = \"/run/haproxy/admin.sock\" } (an admin-level stats socket)",
                    );
                }
                None
            }
        }
    }

    pub(super) fn reload(&mut self, t: &Tbl, main: Option<&MainConfig>) -> Option<Reload> {
        let v = t.get("reload")?;
        if let DeValue::Table(map) = v.get_ref()
            && map.get("haproxy_master").is_some()
        {
            let sub = Tbl::new(map, v.span(), &join(&t.name, "reload"));
            let socket = self.path(&sub, "haproxy_master");
            self.finish(&sub, &["haproxy_master"]);
            return socket.map(|socket| Reload::HaproxyMaster { socket });
        }
        if let DeValue::Table(map) = v.get_ref()
            && map.get("signal").is_some()
        {
            let sub = Tbl::new(map, v.span(), &join(&t.name, "reload"));
            let signal = self.signal(&sub, "signal");
            let pidfile = self.path(&sub, "pidfile");
            let target = self.string(&sub, "target");
            let confirm = match self.string(&sub, "confirm") {
                None => false,
                Some(c) if c.get_ref() == "new_child" => true,
                Some(c) => {
                    self.error(
                        c.span(),
                        format!("unknown reload confirmation {:?}", c.get_ref()),
                        "use confirm = \"new_child\" (the process starts a new child when it applied the config, as nginx does), or leave it out",
                    );
                    false
                }
            };
            self.finish(&sub, &["signal", "pidfile", "target", "confirm"]);
            let target = match (pidfile, target) {
                (Some(p), None) => SignalTarget::Pidfile(p),
                (None, Some(tg)) if tg.get_ref() == "main" => {
                    if main.is_none_or(|m| m.exec.is_none()) {
                        self.error(tg.span(), "reload target \"main\" needs a [main] section with `exec`", "add [main] exec = [...], or signal a pidfile: { signal = \"HUP\", pidfile = \"/run/nginx.pid\" }");
                    }
                    SignalTarget::Main
                }
                (None, Some(tg)) => {
                    self.error(
                        tg.span(),
                        format!("unknown reload target {:?}", tg.get_ref()),
                        "use target = \"main\" (the supervised process) or pidfile = \"...\"",
                    );
                    return None;
                }
                _ => {
                    self.error(
                        v.span(),
                        "a signal reload needs exactly one of `pidfile` or `target = \"main\"`",
                        "e.g. reload = { signal = \"HUP\", pidfile = \"/run/nginx.pid\" }",
                    );
                    return None;
                }
            };
            return Some(Reload::Signal {
                signal: signal?,
                target,
                confirm,
            });
        }
        self.command_value(v, t, "reload", Duration::from_secs(30))
            .map(Reload::Command)
    }
}

const TEMPLATE_KEYS: &[&str] = &[
    "name",
    "source",
    "destination",
    "perms",
    "check",
    "check_mode",
    "reload",
    "wait",
    "write",
    "backup",
    "runtime",
    "render_timeout",
    "max_output",
];

/// Whether two paths name one file: equal, or (when both exist) the same inode.
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    a == b
        || match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
            _ => false,
        }
}
