//! Finds the Go templates an imported config names, converts each to Tera once, and keeps
//! the results for `DIR/templates/`.
//!
//! Configs name templates by their path inside the container (`/etc/containerpilot/x.ctmpl`)
//! while the import usually runs on a checkout where the file sits beside the config; both
//! places are tried, and a person is told which file was read.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::gotmpl;
use super::plan::{Finding, Location, TemplateFile};
use super::tree::Node;
use super::walk::Ctx;

/// Where a template's text comes from.
pub enum Source<'s> {
    /// A path as the config wrote it.
    File(&'s str),
    /// Text written in the config itself (consul-template's `contents`), with a name for
    /// the converted file.
    Inline { text: &'s str, name: &'s str },
}

pub struct Templates {
    config_dir: PathBuf,
    pub files: Vec<TemplateFile>,
    taken: HashSet<String>,
    /// Already converted: (source as written, delimiters) -> relative path.
    done: Vec<(String, String, String)>,
}

impl Templates {
    pub fn new(config_file: &Path) -> Templates {
        Templates {
            config_dir: config_file
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            files: Vec::new(),
            taken: HashSet::new(),
            done: Vec::new(),
        }
    }

    /// Converts one template. Returns the Tera file's path relative to the output directory
    /// (`templates/NAME.tera`), or why there is none (already reported).
    pub fn convert(
        &mut self,
        ctx: &mut Ctx,
        source: Source,
        opts: &gotmpl::Options,
        node: &Node,
        path: &str,
    ) -> Result<String, String> {
        let (text, file, name) = match source {
            Source::File(given) => {
                let key = format!("{}{}", opts.left_delimiter, opts.right_delimiter);
                if let Some((_, _, rel)) =
                    self.done.iter().find(|(g, k, _)| g == given && *k == key)
                {
                    return Ok(rel.clone());
                }
                let Some(found) = self.find(given) else {
                    let why = format!(
                        "template source {given} not found (looked at {} and beside the config): put the file there and import again, or convert it by hand",
                        self.resolve(given).display()
                    );
                    ctx.unmapped(node, path, why.clone());
                    return Err(why);
                };
                if found != self.resolve(given) {
                    ctx.note(
                        node,
                        path,
                        format!(
                            "{given} does not exist here; converted {} instead",
                            found.display()
                        ),
                    );
                }
                let text = match std::fs::read_to_string(&found) {
                    Ok(t) => t,
                    Err(e) => {
                        let why = format!("cannot read template {}: {e}", found.display());
                        ctx.unmapped(node, path, why.clone());
                        return Err(why);
                    }
                };
                let name = file_stem(given);
                (text, found, name)
            }
            Source::Inline { text, name } => {
                (text.to_string(), ctx.file.to_path_buf(), name.to_string())
            }
        };
        let converted = match gotmpl::convert(&text, opts) {
            Ok(c) => c,
            Err(e) => {
                let why = format!("cannot read the Go template: {}", e.what);
                ctx.findings.push(Finding {
                    at: Location::Pos {
                        file: file.clone(),
                        line: e.line,
                        col: e.col,
                    },
                    what: why.clone(),
                    needs_person: true,
                });
                return Err(why);
            }
        };
        // Inline templates report positions inside `contents`; say so.
        let inline = file == ctx.file;
        for p in converted.problems {
            let what = if inline {
                format!(
                    "{path} (line {} of the inline template): {}",
                    p.line, p.what
                )
            } else {
                p.what
            };
            let at = if inline {
                ctx.at(node, path)
            } else {
                Location::Pos {
                    file: file.clone(),
                    line: p.line,
                    col: p.col,
                }
            };
            ctx.findings.push(Finding {
                at,
                what,
                needs_person: p.needs_person,
            });
        }
        if let Err(e) = gotmpl::check_tera(&converted.text) {
            ctx.findings.push(Finding {
                at: Location::Path {
                    file: file.clone(),
                    path: String::new(),
                },
                what: format!("the converted template does not parse as Tera (an import bug; please report it): {e}"),
                needs_person: true,
            });
        }
        let rel = self.claim(&name);
        self.files.push(TemplateFile {
            path: rel.clone(),
            text: converted.text,
        });
        if let Source::File(given) = source {
            let key = format!("{}{}", opts.left_delimiter, opts.right_delimiter);
            self.done.push((given.to_string(), key, rel.clone()));
        }
        Ok(rel)
    }

    fn resolve(&self, given: &str) -> PathBuf {
        self.config_dir.join(given)
    }

    fn find(&self, given: &str) -> Option<PathBuf> {
        let direct = self.resolve(given);
        if direct.is_file() {
            return Some(direct);
        }
        let beside = self.config_dir.join(Path::new(given).file_name()?);
        beside.is_file().then_some(beside)
    }

    /// A free `templates/NAME.tera`.
    fn claim(&mut self, name: &str) -> String {
        let mut candidate = name.to_string();
        let mut n = 2;
        while self.taken.contains(&candidate) {
            candidate = format!("{name}-{n}");
            n += 1;
        }
        self.taken.insert(candidate.clone());
        format!("templates/{candidate}.tera")
    }
}

/// `nginx.conf.ctmpl` -> `nginx.conf`.
fn file_stem(given: &str) -> String {
    let base = Path::new(given)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "template".into());
    for ext in [".ctmpl", ".tmpl", ".tpl", ".template", ".tera"] {
        if let Some(stem) = base.strip_suffix(ext)
            && !stem.is_empty()
        {
            return clean(stem);
        }
    }
    clean(&base)
}

fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}
