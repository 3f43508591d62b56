//! The `matching` test and the `regex_replace` filter, each pattern compiled once per engine
//! and searched with a warm cache.
//!
//! tera-contrib's versions (which these replace, with the same arguments and messages) keep
//! each compiled `Regex` but hand out a clone of it on every call, and a cloned `Regex` starts
//! with an empty search cache: every call set up the lazy DFA's cache again. The bundled nginx
//! template checks five KV settings with `matching` and names each upstream with
//! `regex_replace`, so the daemon paid that on every render, on the path from a catalog change
//! to the file in place. Here the cache hands out `Arc<Regex>`: one regex, one pool of caches.
//!
//! A pattern may come from catalog data (`v is matching(pat=key(...))`), so the cache holds at
//! most [`MAX_PATTERNS`]; past that a pattern is compiled for the call and not kept.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use regex::Regex;
use tera::{Kwargs, State, TeraResult};

/// Patterns kept per engine; templates use a handful.
const MAX_PATTERNS: usize = 64;

#[derive(Debug, Default)]
struct Cache(RwLock<HashMap<String, Arc<Regex>>>);

impl Cache {
    fn get(&self, pattern: &str) -> TeraResult<Arc<Regex>> {
        if let Some(r) = self
            .0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(pattern)
        {
            return Ok(Arc::clone(r));
        }
        let regex = Regex::new(pattern)
            .map(Arc::new)
            .map_err(|e| tera::Error::message(format!("Invalid regex: {e}")))?;
        let mut cache = self.0.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() < MAX_PATTERNS {
            cache.insert(pattern.to_string(), Arc::clone(&regex));
        }
        Ok(regex)
    }
}

/// `value is matching(pat="^[0-9]+$")`: whether a string matches.
#[derive(Debug, Default)]
pub(super) struct Matching(Cache);

impl tera::Test<&str, TeraResult<bool>> for Matching {
    fn call(&self, val: &str, kwargs: Kwargs, _: &State) -> TeraResult<bool> {
        let pat = kwargs.must_get::<&str>("pat")?;
        Ok(self.0.get(pat)?.is_match(val))
    }
}

/// `value | regex_replace(pattern="[^a-z]", rep="_")`: every match replaced.
#[derive(Debug, Default)]
pub(super) struct RegexReplace(Cache);

impl tera::Filter<&str, TeraResult<String>> for RegexReplace {
    fn call(&self, val: &str, kwargs: Kwargs, _: &State) -> TeraResult<String> {
        let pattern = kwargs.must_get::<&str>("pattern")?;
        let rep = kwargs.must_get::<&str>("rep")?;
        Ok(self.0.get(pattern)?.replace_all(val, rep).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_is_compiled_once_and_the_cache_stops_at_its_limit() {
        let cache = Cache::default();
        let a = cache.get("^a+$").unwrap();
        assert!(Arc::ptr_eq(&a, &cache.get("^a+$").unwrap()));
        for i in 0..2 * MAX_PATTERNS {
            assert!(
                cache
                    .get(&format!("^{i}$"))
                    .unwrap()
                    .is_match(&i.to_string())
            );
        }
        assert_eq!(cache.0.read().unwrap().len(), MAX_PATTERNS);
        let err = cache.get("(").unwrap_err().to_string();
        assert!(err.contains("Invalid regex"), "{err}");
    }

    #[test]
    fn templates_match_and_replace_as_before() {
        let mut tera = tera::Tera::default();
        tera.register_test("matching", Matching::default());
        tera.register_filter("regex_replace", RegexReplace::default());
        tera.add_raw_template(
            "t",
            r#"{{ "75s" is matching(pat="^[0-9]+(s|m)?$") }} {{ "x1" is matching(pat="^[0-9]+$") }} {{ "my.svc-1" | regex_replace(pattern="[^A-Za-z0-9_-]", rep="_") }}"#,
        )
        .unwrap();
        let out = tera.render("t", &tera::Context::new()).unwrap();
        assert_eq!(out, "true false my_svc-1");
        tera.add_raw_template("bad", r#"{{ "x" is matching(pat="(") }}"#)
            .unwrap();
        let err = format!(
            "{:?}",
            tera.render("bad", &tera::Context::new()).unwrap_err()
        );
        assert!(err.contains("Invalid regex"), "{err}");
    }
}
