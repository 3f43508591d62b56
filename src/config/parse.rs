//! Reads `rewire.toml` text into a [`Config`], listing every problem at once.
//!
//! Pure: [`parse_str`] takes text, a path (for messages and to anchor relative paths) and the
//! environment, and touches nothing else; [`load`](super::load::load) adds reading the file
//! and the checks that look at the disk. The sections are read in the order below, each by
//! its own module, which also owns its list of accepted keys.

use std::path::{Component, Path, PathBuf};

use toml::de::DeTable;

use super::Config;
use super::error::{ConfigError, ConfigErrors};
use super::load::DiskCheck;
use super::walker::{Tbl, Walker, finish_sorted};

const ROOT_KEYS: &[&str] = &[
    "catalog",
    "control",
    "defaults",
    "template",
    "service",
    "watch",
    "task",
    "job",
    "election",
    "main",
    "telemetry",
    "metric",
];

/// Parses config text. `path` names the file in errors and anchors relative paths.
pub fn parse_str(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let parsed = parse(text, path, env);
    match parsed.config {
        Some(c) if parsed.errors.is_empty() => Ok(c),
        _ => Err(ConfigErrors(finish_sorted(parsed.errors))),
    }
}

/// What one pass over the text found: the config (when it could be built), every problem, and
/// what the disk must still confirm (see [`DiskCheck`]).
pub(super) struct Parsed {
    pub config: Option<Config>,
    pub errors: Vec<ConfigError>,
    pub disk: Vec<DiskCheck>,
}

pub(super) fn parse(text: &str, path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Parsed {
    let path = absolute(path);
    let mut w = Walker {
        src: text,
        file: &path,
        dir: path.parent().unwrap_or(Path::new("/")).to_path_buf(),
        env,
        errors: Vec::new(),
        warnings: Vec::new(),
        disk: Vec::new(),
        whens: Vec::new(),
        service_jobs: Vec::new(),
    };
    let (root, parse_errors) = DeTable::parse_recoverable(text);
    for e in parse_errors {
        let span = e.span().unwrap_or(0..0);
        w.error(
            span,
            format!("invalid TOML: {}", e.message().trim()),
            "fix the syntax at this spot",
        );
    }
    if !w.errors.is_empty() {
        return Parsed {
            config: None,
            errors: w.errors,
            disk: Vec::new(),
        };
    }
    let root_span = root.span();
    let root = Tbl::new(root.get_ref(), root_span, "");
    let mut config = w.config(&root, &path);
    w.finish(&root, ROOT_KEYS);
    if let Some(c) = &mut config {
        c.warnings = std::mem::take(&mut w.warnings);
    }
    Parsed {
        config,
        errors: w.errors,
        disk: w.disk,
    }
}

pub(super) fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        normalize(path)
    } else {
        normalize(
            &std::env::current_dir()
                .unwrap_or_else(|_| PathBuf::from("/"))
                .join(path),
        )
    }
}

/// Removes `.` and resolves `..` lexically (no symlinks followed), so equal paths compare equal.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

impl Walker<'_> {
    pub(super) fn config(&mut self, root: &Tbl, path: &Path) -> Option<Config> {
        let catalog = self.catalog(root);
        let control = self.control(root);
        let defaults = self.defaults(root);
        let main = root.get("main").and_then(|_| self.main(root));
        let templates = self.templates(root, defaults.wait, defaults.limits, main.as_ref());
        let services = self.services(root, catalog.deregister_after);
        let watches = self.watches(root, defaults.wait);
        let metrics = self.metrics(root);
        let tasks = self.tasks(root, &metrics);
        let telemetry = self.telemetry(root);
        let jobs = self.jobs(root);
        let elections = self.elections(root, &services, &jobs);
        self.check_jobs(&jobs, main.is_some());
        Some(Config {
            path: path.to_path_buf(),
            catalog,
            control,
            defaults,
            templates,
            services,
            watches,
            tasks,
            elections,
            jobs,
            main,
            telemetry,
            metrics,
            warnings: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nix::sys::signal::Signal;

    use super::*;
    use crate::config::{
        Backend, CommandSpec, DEFAULT_WAIT, DirSettings, Program, Reload, SignalTarget, Wait,
    };

    fn env(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("8080".into()),
            "TOKEN" => Some("s3cret".into()),
            _ => None,
        }
    }

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        parse_str(text, Path::new("/etc/rewire/rewire.toml"), &env)
    }

    fn errors(text: &str) -> Vec<String> {
        parse(text)
            .expect_err("config should be rejected")
            .0
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn empty_config_gets_defaults() {
        let c = parse("").unwrap();
        assert_eq!(
            c.catalog.backend,
            Backend::Dir(DirSettings {
                path: "/etc/rewire/catalog".into()
            })
        );
        assert_eq!(c.defaults.wait, DEFAULT_WAIT);
        assert!(c.main.is_none());
    }

    #[test]
    fn render_limits_come_from_defaults_and_each_template_may_override_them() {
        let c = parse(
            "[defaults]\nrender_timeout = \"2s\"\nmax_output = \"1MiB\"\n\n[[template]]\nsource = \"a.tera\"\ndestination = \"a\"\n\n[[template]]\nsource = \"b.tera\"\ndestination = \"b\"\nrender_timeout = \"30s\"\nmax_output = 4096\n",
        )
        .unwrap();
        assert_eq!(c.templates[0].limits.timeout, Duration::from_secs(2));
        assert_eq!(c.templates[0].limits.max_output, 1 << 20);
        assert_eq!(c.templates[1].limits.timeout, Duration::from_secs(30));
        assert_eq!(c.templates[1].limits.max_output, 4096);
        let c = parse("[[template]]\nsource = \"a.tera\"\ndestination = \"a\"\n").unwrap();
        assert_eq!(c.templates[0].limits, crate::config::DEFAULT_RENDER_LIMITS);
        let errs = errors(
            "[[template]]\nsource = \"a.tera\"\ndestination = \"a\"\nrender_timeout = \"0s\"\nmax_output = \"16\"\n",
        );
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(
            errs[0].contains(":4:18: `render_timeout` is zero"),
            "{errs:#?}"
        );
        assert!(
            errs[1].contains(":5:14: `max_output`: \"16\" has no unit"),
            "{errs:#?}"
        );
    }

    #[test]
    fn all_problems_are_listed_with_locations() {
        let errs = errors(
            "[catalog]\nbackend = \"dir\"\nblok_wait = \"10s\"\n\n[defaults]\nwait = { min = \"10 sec\" }\n\n[[template]]\nsource = 5\n",
        );
        assert_eq!(errs.len(), 4, "{errs:#?}");
        assert!(errs[0].starts_with("/etc/rewire/rewire.toml:3:1: unknown key `blok_wait`"));
        assert!(errs[0].contains("did you mean `block_wait`"));
        assert!(errs[1].starts_with("/etc/rewire/rewire.toml:6:16: `min`"));
        assert!(errs[1].contains("hint: write a number with a unit"));
        assert!(errs.iter().any(|e| e.contains("needs `destination`")));
        assert!(
            errs.iter()
                .any(|e| e.contains(":9:10: `source` in [template[1]] must be a string"))
        );
    }

    #[test]
    fn an_empty_required_command_and_a_zero_timeout_are_errors() {
        let errs = errors(
            "[[job]]\nname = \"j\"\nexec = []\n\n[[watch]]\nservice = \"s\"\non_change = []\n\n\
             [[task]]\nexec = [\"true\"]\nevery = \"1m\"\ntimeout = \"0s\"\n\n\
             [main]\nexec = [\"sleep\", \"1\"]\npre_start = { exec = [\"true\"], timeout = \"0s\" }\n",
        );
        assert_eq!(errs.len(), 4, "{errs:#?}");
        assert!(
            errs[0].contains(":3:8: `exec` is an empty command"),
            "{errs:#?}"
        );
        assert!(
            errs[1].contains(":7:13: `on_change` is an empty command"),
            "{errs:#?}"
        );
        assert!(
            errs[2].contains(":12:1: `timeout` must be more than 0"),
            "{errs:#?}"
        );
        assert!(errs[3].contains(":16:"), "{errs:#?}");
        assert!(
            errs[3].contains("`timeout` must be more than 0"),
            "{errs:#?}"
        );
    }

    #[test]
    fn a_bare_number_for_a_duration_says_which_unit_to_write() {
        let errs = errors("[main]\nexec = [\"x\"]\nstop_timeout = 10\n");
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(
            errs[0].contains(":3:16: `stop_timeout` in [main] is a bare number"),
            "{errs:#?}"
        );
        assert!(errs[0].contains("stop_timeout = \"10s\""), "{errs:#?}");
    }

    #[test]
    fn interpolation_inside_strings_and_numbers() {
        let c = parse(
            "[catalog]\nbackend = \"consul\"\ntoken = \"${TOKEN}\"\naddress = \"http://${HOST:-127.0.0.1}:8500\"\n[[service]]\nname = \"web\"\nport = \"${PORT}\"\n",
        )
        .unwrap();
        let Backend::Consul(s) = &c.catalog.backend else {
            panic!()
        };
        assert_eq!(s.token.as_ref().unwrap().expose(), "s3cret");
        assert_eq!(format!("{:?}", s.token), "Some(<redacted>)");
        assert_eq!(s.address.as_deref(), Some("http://127.0.0.1:8500"));
        assert_eq!(c.services[0].port, 8080);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.tera"), "x").unwrap();
        let c = parse_str(
            "[[template]]\nsource = \"a.tera\"\ndestination = \"out.conf\"\nperms = \"${MODE:-0640}\"\n",
            &dir.path().join("rewire.toml"),
            &env,
        )
        .unwrap();
        assert_eq!(c.templates[0].perms, Some(0o640));
        let errs = errors("[catalog]\nbackend = \"consul\"\ntoken = \"${NOPE}\"\n");
        assert!(
            errs[0].contains(":3:9:") && errs[0].contains("NOPE is not set"),
            "{errs:?}"
        );
    }

    #[test]
    fn check_must_mention_file_and_destinations_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.tera"), "x").unwrap();
        let text = "[[template]]\nsource = \"a.tera\"\ndestination = \"out.conf\"\ncheck = [\"nginx\", \"-t\"]\n\n[[template]]\nname = \"b\"\nsource = \"a.tera\"\ndestination = \"./out.conf\"\n";
        let errs: Vec<String> = parse_str(text, &dir.path().join("rewire.toml"), &env)
            .unwrap_err()
            .0
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(errs[0].contains(":4:1:") && errs[0].contains("{file}"));
        assert!(
            errs[1].contains(":9:15:")
                && errs[1].contains("already written by the template at line 3")
        );
    }

    #[test]
    fn commands_are_argv_or_explicit_shell() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.tera"), "x").unwrap();
        let cfg = |reload: &str| {
            format!("[[template]]\nsource = \"a.tera\"\ndestination = \"out\"\nreload = {reload}\n")
        };
        let path = dir.path().join("rewire.toml");
        let c = parse_str(&cfg("[\"nginx\", \"-s\", \"reload\"]"), &path, &env).unwrap();
        assert_eq!(
            c.templates[0].reload,
            Some(Reload::Command(CommandSpec {
                program: Program::Argv(vec!["nginx".into(), "-s".into(), "reload".into()]),
                timeout: Duration::from_secs(30)
            }))
        );
        let c = parse_str(
            &cfg("{ shell = \"kill -HUP $(cat /run/x.pid)\", timeout = \"5s\" }"),
            &path,
            &env,
        )
        .unwrap();
        assert!(
            matches!(&c.templates[0].reload, Some(Reload::Command(CommandSpec { program: Program::Shell(_), timeout })) if *timeout == Duration::from_secs(5))
        );
        let c = parse_str(
            &cfg("{ signal = \"hup\", pidfile = \"/run/nginx.pid\" }"),
            &path,
            &env,
        )
        .unwrap();
        assert_eq!(
            c.templates[0].reload,
            Some(Reload::Signal {
                signal: Signal::SIGHUP,
                target: SignalTarget::Pidfile("/run/nginx.pid".into()),
                confirm: false,
            })
        );
        let e = parse_str(&cfg("\"nginx -s reload\""), &path, &env).unwrap_err();
        assert!(e.to_string().contains("commands are argv arrays"));
        let e =
            parse_str(&cfg("{ signal = \"HUP\", target = \"main\" }"), &path, &env).unwrap_err();
        assert!(e.to_string().contains("needs a [main] section"));
    }

    #[test]
    fn wait_max_defaults_to_four_times_min() {
        let c = parse("[defaults]\nwait = { min = \"2s\" }\n").unwrap();
        assert_eq!(c.defaults.wait.max, Duration::from_secs(8));
        let c = parse("[defaults]\nwait = \"1s:3s\"\n").unwrap();
        assert_eq!(
            c.defaults.wait,
            Wait {
                min: Duration::from_secs(1),
                max: Duration::from_secs(3)
            }
        );
        assert!(
            errors("[defaults]\nwait = { min = \"5s\", max = \"1s\" }\n")[0]
                .contains("less than min")
        );
    }

    #[test]
    fn drain_defaults_to_three_seconds_when_a_service_registers() {
        let with =
            parse("[[service]]\nname = \"web\"\nport = 80\n[main]\nexec = [\"app\"]\n").unwrap();
        assert_eq!(with.main.unwrap().drain, Duration::from_secs(3));
        assert!(with.warnings.is_empty());
        let without = parse("[main]\nexec = [\"app\"]\n").unwrap();
        assert_eq!(without.main.unwrap().drain, Duration::ZERO);
        let set = parse(
            "[[service]]\nname = \"web\"\nport = 80\n[main]\nexec = [\"app\"]\ndrain = \"1s\"\n",
        )
        .unwrap();
        assert_eq!(set.main.unwrap().drain, Duration::from_secs(1));
    }

    #[test]
    fn a_zero_interval_is_named_and_a_health_timeout_past_the_ttl_is_warned_about() {
        let errs = errors("[[service]]\nname = \"web\"\nport = 80\ninterval = \"0s\"\n");
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(
            errs[0].contains(":4:1: `interval` must be more than 0"),
            "{errs:#?}"
        );
        let c = parse(
            "[[service]]\nname = \"web\"\nport = 80\nttl = \"25s\"\n\
             health = { exec = [\"check\"], timeout = \"30s\" }\n",
        )
        .unwrap();
        let w: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains(":5:1: the health command's timeout (30s)"),
            "{w:?}"
        );
    }

    #[test]
    fn token_and_token_file_together_or_a_missing_token_file_are_warned_about() {
        let c = parse(
            "[catalog]\nbackend = \"consul\"\ntoken = \"t\"\ntoken_file = \"/nonexistent/rewire-token\"\n",
        )
        .unwrap();
        let w: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains(":4:1: both `token` and `token_file`"),
            "{w:?}"
        );
        assert!(
            w[1].contains("/nonexistent/rewire-token does not exist"),
            "{w:?}"
        );
    }

    #[test]
    fn a_zero_drain_beside_a_service_is_warned_about_with_its_location() {
        let c = parse(
            "[[service]]\nname = \"web\"\nport = 80\n[main]\nexec = [\"app\"]\ndrain = \"0s\"\n",
        )
        .unwrap();
        assert_eq!(c.main.unwrap().drain, Duration::ZERO);
        let w: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("/etc/rewire/rewire.toml:6:1: drain = \"0s\" stops main"),
            "{w:?}"
        );
        assert!(w[0].contains("wait.max + its check + its reload"), "{w:?}");
        // Without a service, 0s is the default and says nothing.
        let c = parse("[main]\nexec = [\"app\"]\ndrain = \"0s\"\n").unwrap();
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn runtime_and_master_reload_are_read() {
        let c = parse(
            "[[template]]\nsource = \"h.tera\"\ndestination = \"/etc/haproxy/haproxy.cfg\"\nreload = { haproxy_master = \"/run/haproxy-master.sock\" }\nruntime = { haproxy = \"run/admin.sock\" }\n",
        )
        .unwrap();
        let t = &c.templates[0];
        assert_eq!(
            t.reload,
            Some(Reload::HaproxyMaster {
                socket: "/run/haproxy-master.sock".into()
            })
        );
        assert_eq!(
            t.runtime,
            Some(crate::config::RuntimeApi::Haproxy {
                socket: "/etc/rewire/run/admin.sock".into()
            })
        );
    }

    #[test]
    fn runtime_needs_a_reload_and_a_known_program() {
        let errs = errors(
            "[[template]]\nsource = \"h.tera\"\ndestination = \"h.cfg\"\nruntime = { haproxy = \"/run/admin.sock\" }\n",
        );
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(
            errs[0].contains(":4:1: `runtime` needs a `reload`"),
            "{errs:#?}"
        );
        assert!(errs[0].contains("haproxy_master"), "{errs:#?}");
        let errs = errors(
            "[[template]]\nsource = \"h.tera\"\ndestination = \"h.cfg\"\nreload = [\"x\"]\nruntime = { nginx = \"/x\" }\n",
        );
        assert!(
            errs.iter().any(|e| e.contains("unknown key `nginx`")),
            "{errs:#?}"
        );
        let errs = errors(
            "[[template]]\nsource = \"h.tera\"\ndestination = \"h.cfg\"\nreload = [\"x\"]\nruntime = {}\n",
        );
        assert!(
            errs.iter().any(|e| e.contains("names no program")),
            "{errs:#?}"
        );
        let errs = errors(
            "[[template]]\nsource = \"h.tera\"\ndestination = \"h.cfg\"\nreload = { haproxy_master = \"/m\", signal = \"HUP\" }\n",
        );
        assert!(
            errs.iter().any(|e| e.contains("unknown key `signal`")),
            "{errs:#?}"
        );
    }

    #[test]
    fn size_caps_and_the_control_group_are_read_and_checked() {
        let c = parse("[catalog]\nmax_file = \"64KiB\"\n\n[control]\nsocket = \"/run/x.sock\"\ngroup = \"rewire\"\n").unwrap();
        assert_eq!(c.catalog.max_file, 64 << 10);
        assert_eq!(c.catalog.max_response, 64 << 20);
        assert_eq!(c.control.group.as_deref(), Some("rewire"));
        let c = parse("[catalog]\nbackend = \"consul\"\nmax_response = \"1GiB\"\n").unwrap();
        assert_eq!(c.catalog.max_response, 1 << 30);
        let errs = errors("[catalog]\nmax_file = \"lots\"\n");
        assert!(
            errs[0].contains(":2:12:") && errs[0].contains("is not a size"),
            "{errs:?}"
        );
        let errs = errors("[catalog]\nmax_file = \"10B\"\n");
        assert!(errs[0].contains("between 1KiB and 1GiB"), "{errs:?}");
        // Bodies come from Consul and etcd only.
        let errs = errors("[catalog]\nmax_response = \"1MiB\"\n");
        assert!(errs[0].contains("max_response"), "{errs:?}");
        let errs = errors("[control]\ngroup = \"wheel; rm\"\n");
        assert!(errs[0].contains("not a group name"), "{errs:?}");
    }

    #[test]
    fn consul_max_connections_is_bounded_and_warned_above_what_consul_takes_twice() {
        let consul = |v: &str| format!("[catalog]\nbackend = \"consul\"\nmax_connections = {v}\n");
        let c = parse(&consul("40")).unwrap();
        match &c.catalog.backend {
            crate::config::Backend::Consul(s) => assert_eq!(s.max_connections, Some(40)),
            other => panic!("{other:?}"),
        }
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let c = parse(&consul("150")).unwrap();
        let w: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
        assert!(
            w.len() == 1 && w[0].contains(":3:") && w[0].contains("http_max_conns_per_client"),
            "{w:?}"
        );
        let errs = errors(&consul("0"));
        assert!(errs[0].contains("between 1 and 10000"), "{errs:?}");
        // Only Consul has it.
        let errs = errors("[catalog]\nbackend = \"etcd\"\nmax_connections = 10\n");
        assert!(errs[0].contains("max_connections"), "{errs:?}");
    }

    #[test]
    fn a_period_in_milliseconds_for_minutes_is_warned_about() {
        let c = parse(
            "[[task]]\nevery = \"1ms\"\nexec = [\"true\"]\n\n[[job]]\nname = \"j\"\nexec = [\"sleep\", \"9\"]\nhealth = [\"true\"]\ninterval = \"50ms\"\n",
        )
        .unwrap();
        let w: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains(":2:")
                && w[0].contains("`every` = 1ms")
                && w[0].contains("\"1m\" (minutes)"),
            "{w:?}"
        );
        assert!(w[1].contains("`interval` = 50ms"), "{w:?}");
        let c = parse("[[task]]\nevery = \"100ms\"\nexec = [\"true\"]\n").unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn a_stop_signal_leaves_the_default_forward_list_but_both_lists_may_not_share_one() {
        let m = parse("[main]\nexec = [\"app\"]\nstop_signals = [\"USR1\"]\n")
            .unwrap()
            .main
            .unwrap();
        assert_eq!(m.stop_signals, vec![Signal::SIGUSR1]);
        assert_eq!(m.forward_signals, vec![Signal::SIGUSR2]);
        let e = errors(
            "[main]\nexec = [\"app\"]\nstop_signals = [\"USR1\"]\nforward_signals = [\"USR1\"]\n",
        );
        assert!(
            e.iter()
                .any(|e| e.contains("both forwarded and a stop signal")),
            "{e:?}"
        );
    }

    #[test]
    fn an_interface_may_be_a_list_tried_in_order() {
        let c = parse("[[service]]\nname = \"web\"\nport = 80\ninterface = [\"eth1\", \"eth0\"]\n")
            .unwrap();
        assert_eq!(
            c.services[0].address,
            crate::config::AddressSpec::Interface(vec!["eth1".into(), "eth0".into()])
        );
        let e = errors("[[service]]\nname = \"web\"\nport = 80\ninterface = []\n");
        assert!(
            e.iter().any(|e| e.contains("`interface` is an empty list")),
            "{e:?}"
        );
    }

    #[test]
    fn main_may_wait_for_its_templates_forever() {
        let m = parse("[main]\nexec = [\"app\"]\nwait_for_templates = \"forever\"\n")
            .unwrap()
            .main
            .unwrap();
        assert_eq!(m.wait_for_templates, Duration::MAX);
        let e = errors("[main]\nexec = [\"app\"]\nwait_for_templates = \"never\"\n");
        assert!(e.iter().any(|e| e.contains("wait_for_templates")), "{e:?}");
    }

    /// Found by a regression hunt: the fix above went one way only; a forwarded TERM or INT
    /// alone conflicted with the default stop list.
    #[test]
    fn a_forwarded_signal_leaves_the_default_stop_list() {
        let m = parse("[main]\nexec = [\"app\"]\nforward_signals = [\"INT\"]\n")
            .unwrap()
            .main
            .unwrap();
        assert_eq!(m.stop_signals, vec![Signal::SIGTERM]);
        assert_eq!(m.forward_signals, vec![Signal::SIGINT]);
    }

    #[test]
    fn a_retry_max_under_the_default_base_lowers_it_unless_a_base_is_written() {
        let c = parse("[catalog]\nretry = { max = \"100ms\" }\n").unwrap();
        assert_eq!(c.catalog.retry.base, Duration::from_millis(100));
        assert_eq!(c.catalog.retry.max, Duration::from_millis(100));
        let e = errors("[catalog]\nretry = { base = \"250ms\", max = \"100ms\" }\n");
        assert!(e.iter().any(|e| e.contains("less than base")), "{e:?}");
    }

    #[test]
    fn a_retry_base_over_the_default_cap_raises_it_unless_a_max_is_written() {
        let c = parse("[catalog]\nretry = { base = \"1m\" }\n").unwrap();
        assert_eq!(c.catalog.retry.max, Duration::from_secs(60));
        let e = errors("[catalog]\nretry = { base = \"1m\", max = \"30s\" }\n");
        assert!(e.iter().any(|e| e.contains("less than base")), "{e:?}");
    }

    #[test]
    fn design_sketch_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("templates")).unwrap();
        std::fs::write(dir.path().join("templates/nginx.conf.tera"), "x").unwrap();
        let text = include_str!("../../tests/data/design-sketch.toml");
        let c = parse_str(text, &dir.path().join("rewire.toml"), &|_| None).unwrap();
        assert_eq!(c.templates[0].name, "nginx.conf");
        assert_eq!(c.services[0].ttl, Duration::from_secs(25));
        let m = c.main.unwrap();
        assert_eq!(m.stop_signals, vec![Signal::SIGTERM, Signal::SIGINT]);
        assert_eq!(c.tasks[0].exec.timeout, Duration::from_secs(60));
    }

    #[test]
    fn telemetry_is_off_unless_listen_is_given() {
        let c = parse("").unwrap();
        assert!(c.telemetry.is_none());
        let c = parse("[telemetry]\nlisten = \"127.0.0.1:${PORT}\"\n").unwrap();
        let t = c.telemetry.unwrap();
        assert_eq!(t.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.catalog_grace, Duration::from_secs(30));
        assert!(!t.status);
        let errs = errors("[telemetry]\nlisten = \"9090\"\nstatus = \"yes\"\n");
        assert!(
            errs.iter()
                .any(|e| e.contains(":2:10: `listen` \"9090\" is not an ADDRESS:PORT")),
            "{errs:?}"
        );
        assert!(errs.iter().any(|e| e.contains(":3:10:")), "{errs:?}");
        assert!(errors("[telemetry]\nstatus = true\n")[0].contains("needs `listen`"));
    }

    #[test]
    fn user_metrics_are_declared_and_named_the_prometheus_way() {
        let c = parse(
            "[[metric]]\nname = \"jobs_total\"\ntype = \"counter\"\nhelp = \"Jobs.\"\n\
             [[task]]\nevery = \"1m\"\nexec = [\"depth\"]\nmetric = \"jobs_total\"\n",
        )
        .unwrap();
        assert_eq!(c.metrics[0].name, "jobs_total");
        assert_eq!(c.metrics[0].kind, crate::config::MetricKind::Counter);
        assert_eq!(c.tasks[0].metric.as_deref(), Some("jobs_total"));
        let errs = errors(
            "[[metric]]\nname = \"rewire_x\"\ntype = \"gauge\"\n\
             [[metric]]\nname = \"9x\"\ntype = \"gauge\"\n\
             [[metric]]\nname = \"ok\"\ntype = \"summary\"\n\
             [[metric]]\nname = \"ok\"\ntype = \"gauge\"\n\
             [[task]]\nevery = \"1m\"\nexec = [\"x\"]\nmetric = \"nope\"\n",
        );
        assert_eq!(errs.len(), 5, "{errs:#?}");
        assert!(errs[0].contains(":2:8: metric name \"rewire_x\" starts with `rewire_`"));
        assert!(errs[1].contains(":5:8: metric name \"9x\" is not a Prometheus name"));
        assert!(errs[2].contains(":9:8: unknown metric type \"summary\""));
        assert!(errs[3].contains(":11:8: metric \"ok\" is declared twice"));
        assert!(errs[4].contains(":16:10: `metric` \"nope\" is not declared"));
    }
}
