//! `rewire import`: a ContainerPilot or consul-template setup translated to rewire.toml and
//! Tera templates in one sitting.
//!
//! Data flows one way: the input file is read into a [`tree`] (HCL, JSON or JSON5, with
//! positions where the reader keeps them), an importer walks it and fills a [`plan::Plan`]
//! (the rewire config as types) while converting the Go templates it names ([`gotmpl`]),
//! [`toml_out`] writes the plan, and the result is checked with rewire's own config parser
//! before anything is written. Every field without an exact rewire equivalent becomes a
//! [`plan::Finding`] with its location; the exit status says whether a person has to act.
//!
//! This module depends on nothing of rewire's runtime (catalogs, runner, supervisor): only
//! `crate::config`, to check its output the way `rewire check` does.

mod argv;
mod consul_template;
mod containerpilot;
pub mod gotmpl;
mod plan;
mod templates;
mod toml_out;
mod tree;
mod walk;

use std::path::{Path, PathBuf};

pub use plan::{Finding, Location};
pub(crate) use toml_out::render as render_plan;

/// `rewire import ...`
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    #[command(subcommand)]
    pub from: ImportFrom,
}

#[derive(Debug, clap::Subcommand)]
pub enum ImportFrom {
    /// A ContainerPilot config: v2 JSON or v3 JSON5.
    #[command(
        after_help = "Example:\n  rewire import containerpilot etc/containerpilot.json --out rewire/\n\nTemplates named in consul-template calls are read from their path, or from beside the config."
    )]
    Containerpilot(FromFile),
    /// A consul-template config (HCL, or JSON).
    #[command(
        after_help = "Example:\n  rewire import consul-template /etc/consul-template/config.hcl --out rewire/"
    )]
    ConsulTemplate(FromFile),
}

#[derive(Debug, clap::Args)]
pub struct FromFile {
    /// The config to translate.
    pub file: PathBuf,
    /// Write DIR/rewire.toml and DIR/templates/*.tera (default: print rewire.toml).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Replace files that already exist in DIR.
    #[arg(long)]
    pub force: bool,
}

/// Why an import stopped before producing anything.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{at}: {what}")]
    Unreadable { at: Location, what: String },
    #[error(
        "{} already exist{}; not overwritten (use --force to replace them)",
        list_paths(paths),
        if paths.len() == 1 { "s" } else { "" }
    )]
    Exists { paths: Vec<PathBuf> },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn list_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What an import produced.
#[derive(Debug)]
pub struct Outcome {
    /// The rewire.toml text.
    pub config: String,
    /// Converted templates, relative to the output directory.
    pub templates: Vec<(String, String)>,
    pub findings: Vec<Finding>,
    /// Where rewire.toml was written (None: printed).
    pub written: Option<PathBuf>,
}

impl Outcome {
    /// Whether something did not map and a person has to act.
    pub fn needs_person(&self) -> bool {
        self.findings.iter().any(|f| f.needs_person)
    }

    /// What the import says on stderr: each finding, then one summary line.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            out.push_str(&format!("{f}\n"));
        }
        let people = self.findings.iter().filter(|f| f.needs_person).count();
        let place = match &self.written {
            Some(p) => format!(
                "wrote {}{}",
                p.display(),
                match self.templates.len() {
                    0 => String::new(),
                    n => format!(" and {n} template{}", if n == 1 { "" } else { "s" }),
                }
            ),
            None if self.templates.is_empty() => "printed rewire.toml".into(),
            None => match self.templates.len() {
                1 => {
                    "printed rewire.toml; its template is written to templates/ only with --out DIR"
                        .to_string()
                }
                n => format!(
                    "printed rewire.toml; its {n} templates are written to templates/ only with --out DIR"
                ),
            },
        };
        if people == 0 {
            out.push_str(&format!("rewire import: {place}; everything mapped"));
        } else {
            out.push_str(&format!(
                "rewire import: {place}; {people} item{} above need{} a person (\"not mapped\")",
                if people == 1 { "" } else { "s" },
                if people == 1 { "s" } else { "" }
            ));
        }
        out
    }
}

/// Translates the input and writes the output (or leaves it for printing).
pub fn import(args: &ImportArgs) -> Result<Outcome, ImportError> {
    let (from, kind) = match &args.from {
        ImportFrom::Containerpilot(f) => (f, Kind::ContainerPilot),
        ImportFrom::ConsulTemplate(f) => (f, Kind::ConsulTemplate),
    };
    let src = std::fs::read_to_string(&from.file).map_err(|source| ImportError::Read {
        path: from.file.clone(),
        source,
    })?;
    let (plan, files, mut findings) = translate(kind, &from.file, &src)?;
    let config = toml_out::render(&plan);
    findings.extend(check(&config, &files));
    let templates: Vec<(String, String)> = files.into_iter().map(|f| (f.path, f.text)).collect();
    let written = match &from.out {
        Some(dir) => {
            write(dir, &config, &templates, from.force)?;
            Some(dir.join("rewire.toml"))
        }
        None => None,
    };
    Ok(Outcome {
        config,
        templates,
        findings,
        written,
    })
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    ContainerPilot,
    ConsulTemplate,
}

/// The pure part: input text to plan, converted templates and findings.
pub(crate) fn translate(
    kind: Kind,
    file: &Path,
    src: &str,
) -> Result<(plan::Plan, Vec<plan::TemplateFile>, Vec<Finding>), ImportError> {
    let mut ctx = walk::Ctx::new(file, src);
    let mut templates = templates::Templates::new(file);
    let mut plan = plan::Plan {
        header: vec![format!(
            "Imported from {} by `rewire import`; check it with `rewire check`.",
            file.display()
        )],
        ..plan::Plan::default()
    };
    let unreadable = |line: usize, col: usize, what: String| ImportError::Unreadable {
        at: Location::Pos {
            file: file.to_path_buf(),
            line,
            col,
        },
        what,
    };
    match kind {
        Kind::ContainerPilot => {
            containerpilot::import(&mut ctx, &mut templates, &mut plan)
                .map_err(|e| unreadable(e.line, e.col, e.what))?;
        }
        Kind::ConsulTemplate => {
            let is_json = file
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("json"));
            let root = if is_json {
                tree::read_json5(src)
            } else {
                tree::read_hcl(src)
            }
            .map_err(|e| unreadable(e.line, e.col, e.what))?;
            consul_template::import(&mut ctx, &root, &mut templates, &mut plan);
        }
    }
    Ok((plan, templates.files, ctx.findings))
}

/// Checks the config the way `rewire check` will, in a scratch directory holding the
/// converted templates. Environment variables are stand-ins: the structure is checked here,
/// the real values when rewire starts.
fn check(config: &str, files: &[plan::TemplateFile]) -> Vec<Finding> {
    let dir = match Scratch::new() {
        Ok(d) => d,
        Err(e) => {
            return vec![Finding {
                at: Location::Path {
                    file: "rewire.toml".into(),
                    path: String::new(),
                },
                what: format!(
                    "could not check the result (no scratch directory: {e}); run `rewire check`"
                ),
                needs_person: true,
            }];
        }
    };
    for f in files {
        let path = dir.0.join(&f.path);
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::write(&path, &f.text);
    }
    let path = dir.0.join("rewire.toml");
    match crate::config::parse_str(config, &path, &|_| Some("1".to_string())) {
        Ok(_) => Vec::new(),
        Err(errors) => errors
            .0
            .into_iter()
            .map(|e| Finding {
                at: Location::Pos {
                    file: "rewire.toml".into(),
                    line: e.line,
                    col: e.col,
                },
                what: format!(
                    "rewire check will reject this: {}{}",
                    e.what,
                    if e.hint.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", e.hint)
                    }
                ),
                needs_person: true,
            })
            .collect(),
    }
}

/// A directory under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> std::io::Result<Scratch> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("rewire-import-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes DIR/rewire.toml and the templates; refuses to replace files unless `force`.
fn write(
    dir: &Path,
    config: &str,
    templates: &[(String, String)],
    force: bool,
) -> Result<(), ImportError> {
    let targets: Vec<(PathBuf, &str)> = std::iter::once((dir.join("rewire.toml"), config))
        .chain(templates.iter().map(|(p, t)| (dir.join(p), t.as_str())))
        .collect();
    if !force {
        let existing: Vec<PathBuf> = targets
            .iter()
            .filter(|(p, _)| p.exists())
            .map(|(p, _)| p.clone())
            .collect();
        if !existing.is_empty() {
            return Err(ImportError::Exists { paths: existing });
        }
    }
    for (path, text) in targets {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| ImportError::Write {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        std::fs::write(&path, text).map_err(|source| ImportError::Write { path, source })?;
    }
    Ok(())
}
