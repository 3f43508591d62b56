//! haproxy.cfg as sections and `server` lines: just enough of HAProxy's syntax to tell which
//! parts of two renders differ.
//!
//! HAProxy reads a config line by line: the first word of a line that names a section
//! (`global`, `defaults`, `frontend`, `backend`, `listen`, `peers`, ...) opens it, whatever
//! the indentation; every other line belongs to the section above. Words are separated by
//! blanks; quotes keep blanks and `#` inside a word; a backslash escapes the next character;
//! `#` outside quotes starts a comment. Words are kept as written (quotes included), so two
//! lines are equal when HAProxy would read the same words, and comments, blank lines and
//! spacing never count as a difference.
//!
//! Conditional blocks (`.if` ... `.endif`) decide at HAProxy's start which lines exist; a
//! config using them is marked [`HaproxyConfig::conditional`] and never updated at runtime.

/// Words that open a section (HAProxy 2.6, plus later ones so their lines are never taken
/// for the previous section's).
const SECTIONS: &[&str] = &[
    "global",
    "defaults",
    "frontend",
    "backend",
    "listen",
    "peers",
    "resolvers",
    "userlist",
    "mailers",
    "cache",
    "program",
    "http-errors",
    "ring",
    "log-forward",
    "fcgi-app",
    "crt-store",
    "traces",
    "acme",
];

/// A parsed haproxy.cfg.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct HaproxyConfig {
    pub sections: Vec<Section>,
    /// The file uses `.if`/`.elif`/`.else`/`.endif`: which lines count is HAProxy's decision.
    pub conditional: bool,
}

/// One section: its header and its lines, `server` lines apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    /// The opening word: `backend`, `defaults`, ... (empty for lines before any section).
    pub kind: String,
    /// The header's other words: `["be_web"]`, `["be_web", "from", "base"]`, `[]`.
    pub args: Vec<String>,
    /// Every line but `server` lines, as words, in order.
    pub lines: Vec<Vec<String>>,
    pub servers: Vec<Server>,
    /// Where the header is (1-based; 0 for lines before any section).
    pub line: usize,
}

impl Section {
    /// The section's name: its first header word (`backend be_web` -> `be_web`).
    pub fn name(&self) -> Option<&str> {
        self.args.first().map(String::as_str)
    }

    /// A backend or listen section: the ones that route to servers.
    pub fn is_proxy_with_servers(&self) -> bool {
        matches!(self.kind.as_str(), "backend" | "listen")
    }

    /// `backend be_web` for messages.
    pub fn title(&self) -> String {
        match self.name() {
            Some(n) => format!("{} {n}", self.kind),
            None if self.kind.is_empty() => "the lines before the first section".into(),
            None => self.kind.clone(),
        }
    }

    /// The lines whose first word is `keyword`, with their other words.
    pub fn directives<'s>(&'s self, keyword: &'s str) -> impl Iterator<Item = &'s [String]> + 's {
        self.lines
            .iter()
            .filter(move |l| l.first().is_some_and(|w| w == keyword))
            .map(|l| &l[1..])
    }
}

/// `server NAME ADDRESS OPTIONS...`, as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    pub name: String,
    /// Empty when the line has no address (HAProxy's check rejects that).
    pub address: String,
    pub options: Vec<String>,
    /// 1-based line number.
    pub line: usize,
}

impl HaproxyConfig {
    /// Reads config text. Never fails: what HAProxy would reject is `haproxy -c`'s to say; a
    /// line this reader cannot split (an open quote) is kept as one word, so it still counts
    /// as a difference.
    pub fn parse(text: &str) -> HaproxyConfig {
        let mut cfg = HaproxyConfig::default();
        let mut current = Section {
            kind: String::new(),
            args: Vec::new(),
            lines: Vec::new(),
            servers: Vec::new(),
            line: 0,
        };
        for (i, raw) in text.lines().enumerate() {
            let words = words(raw);
            let Some(first) = words.first() else {
                continue;
            };
            if matches!(
                first.as_str(),
                ".if" | ".elif" | ".else" | ".endif" | ".diag" | ".notice" | ".warning" | ".alert"
            ) {
                cfg.conditional = true;
            }
            if SECTIONS.contains(&first.as_str()) {
                let done = std::mem::replace(
                    &mut current,
                    Section {
                        kind: first.clone(),
                        args: words[1..].to_vec(),
                        lines: Vec::new(),
                        servers: Vec::new(),
                        line: i + 1,
                    },
                );
                if !(done.kind.is_empty() && done.lines.is_empty() && done.servers.is_empty()) {
                    cfg.sections.push(done);
                }
                continue;
            }
            if first == "server" {
                let mut it = words.into_iter().skip(1);
                current.servers.push(Server {
                    name: it.next().unwrap_or_default(),
                    address: it.next().unwrap_or_default(),
                    options: it.collect(),
                    line: i + 1,
                });
            } else {
                current.lines.push(words);
            }
        }
        if !(current.kind.is_empty() && current.lines.is_empty() && current.servers.is_empty()) {
            cfg.sections.push(current);
        }
        cfg
    }

    /// The backend or listen section called `name`.
    pub fn proxy(&self, name: &str) -> Option<&Section> {
        self.sections
            .iter()
            .find(|s| s.is_proxy_with_servers() && s.name() == Some(name))
    }

    /// The `defaults` section a proxy inherits from: the one it names (`backend b from d`),
    /// else the last one above it.
    pub fn defaults_of(&self, proxy: &Section) -> Option<&Section> {
        if let Some(from) = proxy
            .args
            .iter()
            .position(|w| w == "from")
            .and_then(|i| proxy.args.get(i + 1))
        {
            return self
                .sections
                .iter()
                .find(|s| s.kind == "defaults" && s.name() == Some(from));
        }
        self.sections
            .iter()
            .take_while(|s| s.line < proxy.line)
            .filter(|s| s.kind == "defaults")
            .last()
    }
}

/// Splits one line into words as HAProxy does, keeping each word as written (quotes and
/// backslashes included); drops the comment.
pub fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (_, '\\') => {
                word.push(c);
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                word.push(c);
            }
            (Some(q), _) if c == q => {
                quote = None;
                word.push(c);
            }
            (None, '#') => break,
            (None, ' ' | '\t' | '\r') => {
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
            }
            _ => word.push(c),
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = "\
# rendered by rewire
global
    maxconn 4096   # per process
    stats socket /run/haproxy/admin.sock mode 600 level admin

defaults
    mode http
    balance roundrobin

frontend http
    bind :80
    use_backend be_web if { path_beg \"/web/\" }

backend be_web
    option httpchk
    server web-1 10.0.0.1:8080 check inter 2s
    server web-2 10.0.0.2:8080 check inter 2s weight 3

backend be_api from base
  server api-1 [fd00::1]:9000
";

    #[test]
    fn sections_keep_their_lines_and_servers_apart() {
        let c = HaproxyConfig::parse(CFG);
        let kinds: Vec<String> = c.sections.iter().map(Section::title).collect();
        assert_eq!(
            kinds,
            [
                "global",
                "defaults",
                "frontend http",
                "backend be_web",
                "backend be_api"
            ]
        );
        let web = c.proxy("be_web").unwrap();
        assert_eq!(web.lines, [vec!["option", "httpchk"]]);
        assert_eq!(web.servers.len(), 2);
        assert_eq!(web.servers[1].name, "web-2");
        assert_eq!(web.servers[1].address, "10.0.0.2:8080");
        assert_eq!(
            web.servers[1].options,
            ["check", "inter", "2s", "weight", "3"]
        );
        assert_eq!(web.servers[1].line, 17);
        let api = c.proxy("be_api").unwrap();
        assert_eq!(api.args, ["be_api", "from", "base"]);
        assert_eq!(api.servers[0].address, "[fd00::1]:9000");
        assert!(!c.conditional);
    }

    #[test]
    fn comments_blank_lines_and_spacing_do_not_count() {
        let a = HaproxyConfig::parse("backend b\n  balance   roundrobin\n  server s 1.2.3.4:80\n");
        let b = HaproxyConfig::parse(
            "# header\nbackend   b # the backend\n\n\tbalance roundrobin   # rr\n  server s 1.2.3.4:80 # one\n",
        );
        assert_eq!(a.sections, {
            let mut s = b.sections.clone();
            s[0].line = 1;
            s[0].servers[0].line = 3;
            s
        });
    }

    #[test]
    fn quotes_and_escapes_keep_blanks_and_hashes_inside_a_word() {
        assert_eq!(
            words(r#"  http-check send meth GET uri "/a b#c" hdr x\ y  # comment"#),
            [
                "http-check",
                "send",
                "meth",
                "GET",
                "uri",
                "\"/a b#c\"",
                "hdr",
                "x\\ y"
            ]
        );
        assert_eq!(
            words("log '127.0.0.1:514' local0"),
            ["log", "'127.0.0.1:514'", "local0"]
        );
        assert!(words("   # only a comment").is_empty());
        assert_eq!(
            words("bind \"unterminated #x"),
            ["bind", "\"unterminated #x"]
        );
    }

    #[test]
    fn a_section_keyword_opens_a_section_whatever_the_indentation() {
        let c = HaproxyConfig::parse(
            "backend a\n  server x 1.1.1.1:1\n    backend b\nserver y 2.2.2.2:2\n",
        );
        assert_eq!(c.proxy("a").unwrap().servers.len(), 1);
        assert_eq!(c.proxy("b").unwrap().servers[0].name, "y");
    }

    #[test]
    fn server_lines_of_rings_and_peers_stay_in_their_sections() {
        let c = HaproxyConfig::parse(
            "backend b\n  server s 1.1.1.1:1\nring r\n  server log 1.1.1.1:514\npeers p\n  server me\n",
        );
        assert_eq!(c.proxy("b").unwrap().servers.len(), 1);
        assert_eq!(c.sections[1].kind, "ring");
        assert_eq!(c.sections[1].servers.len(), 1);
        assert_eq!(c.sections[2].servers[0].address, "");
    }

    #[test]
    fn conditional_blocks_are_noticed() {
        let c = HaproxyConfig::parse("backend b\n.if defined(X)\n  server s 1.1.1.1:1\n.endif\n");
        assert!(c.conditional);
    }

    #[test]
    fn a_backend_inherits_the_defaults_above_it_or_the_one_it_names() {
        let c = HaproxyConfig::parse(
            "defaults base\n  balance source\ndefaults\n  balance roundrobin\nbackend a\nbackend b from base\ndefaults\n  balance first\nbackend c\n",
        );
        let d = |b: &str| {
            c.defaults_of(c.proxy(b).unwrap())
                .map(|s| s.directives("balance").next().unwrap()[0].clone())
        };
        assert_eq!(d("a").as_deref(), Some("roundrobin"));
        assert_eq!(d("b").as_deref(), Some("source"));
        assert_eq!(d("c").as_deref(), Some("first"));
        let none = HaproxyConfig::parse("backend a\n");
        assert!(none.defaults_of(none.proxy("a").unwrap()).is_none());
    }

    #[test]
    fn lines_before_any_section_form_their_own() {
        let c = HaproxyConfig::parse("maxconn 10\nglobal\n");
        assert_eq!(c.sections[0].kind, "");
        assert_eq!(c.sections[0].title(), "the lines before the first section");
        assert_eq!(c.sections.len(), 2);
        assert!(HaproxyConfig::parse("\n# nothing\n").sections.is_empty());
    }
}
