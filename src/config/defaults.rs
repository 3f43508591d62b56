//! `[defaults]`: what every template and watch gets unless it says otherwise (the wait, and a
//! template's render limits).

use super::walker::{Tbl, Walker};
use super::{DEFAULT_RENDER_LIMITS, DEFAULT_WAIT, Defaults, RenderLimits};

impl Walker<'_> {
    pub(super) fn defaults(&mut self, root: &Tbl) -> Defaults {
        let Some(t) = self.table(root, "defaults") else {
            return Defaults {
                wait: DEFAULT_WAIT,
                limits: DEFAULT_RENDER_LIMITS,
            };
        };
        let wait = self.wait(&t, "wait", DEFAULT_WAIT);
        let limits = self.render_limits(&t, DEFAULT_RENDER_LIMITS);
        self.finish(&t, DEFAULTS_KEYS);
        Defaults { wait, limits }
    }

    /// `render_timeout` and `max_output` in `t`, else `default`'s. Zero is refused: it would
    /// stop every render.
    pub(super) fn render_limits(&mut self, t: &Tbl, default: RenderLimits) -> RenderLimits {
        let mut limits = default;
        if let Some(d) = self.duration(t, "render_timeout") {
            if d.is_zero() {
                let span = t.get("render_timeout").map_or(t.span.clone(), |v| v.span());
                self.error(
                    span,
                    "`render_timeout` is zero, which would stop every render",
                    "give the longest a render may take, e.g. render_timeout = \"10s\"",
                );
            } else {
                limits.timeout = d;
            }
        }
        if let Some(n) = self.size(t, "max_output", 0..=u64::MAX) {
            if n == 0 {
                let span = t.get("max_output").map_or(t.span.clone(), |v| v.span());
                self.error(
                    span,
                    "`max_output` is zero, which would stop every render",
                    "give the largest file a template may produce, e.g. max_output = \"16MiB\"",
                );
            } else {
                limits.max_output = n;
            }
        }
        limits
    }
}

const DEFAULTS_KEYS: &[&str] = &["wait", "render_timeout", "max_output"];
