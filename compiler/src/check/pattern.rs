//! Module patterns: `encoder.layer.*.attention.self.{query, key, value}`, `{0..3}` ranges.

/// Upper bound on the number of globs one pattern may expand to.
const MAX_EXPANSION: usize = 4096;

/// A pattern expanded into plain globs (`*` matches within one dot-separated segment).
#[derive(Clone, Debug, PartialEq)]
pub struct ModulePattern {
    globs: Vec<String>,
}

impl ModulePattern {
    /// Expands braces; the error says what is wrong with the pattern.
    pub fn parse(text: &str) -> Result<ModulePattern, String> {
        let mut globs = vec![String::new()];
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let close = rest[open..]
                .find('}')
                .map(|c| c + open)
                .ok_or("`{` without `}`")?;
            let prefix = &rest[..open];
            let body = &rest[open + 1..close];
            let mut choices = Vec::new();
            for c in body.split(',') {
                let c = c.trim();
                if c.is_empty() {
                    return Err(format!("empty alternative in `{{{body}}}`"));
                }
                if let Some((a, b)) = c.split_once("..") {
                    let (a, b): (usize, usize) = match (a.parse(), b.parse()) {
                        (Ok(a), Ok(b)) => (a, b),
                        _ => return Err(format!("`{c}` is not a range of integers like `0..3`")),
                    };
                    if a >= b {
                        return Err(format!("range `{c}` is empty (the end is exclusive)"));
                    }
                    if b - a > MAX_EXPANSION {
                        return Err(format!("range `{c}` is too large"));
                    }
                    choices.extend((a..b).map(|i| i.to_string()));
                } else {
                    choices.push(c.to_string());
                }
            }
            let mut next = Vec::with_capacity(globs.len() * choices.len());
            for g in &globs {
                for c in &choices {
                    next.push(format!("{g}{prefix}{c}"));
                }
            }
            if next.len() > MAX_EXPANSION {
                return Err(format!(
                    "pattern expands to more than {MAX_EXPANSION} alternatives"
                ));
            }
            globs = next;
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err("`}` without `{`".into());
        }
        for g in &mut globs {
            g.push_str(rest);
        }
        for g in &globs {
            if g.split('.').any(|s| s.is_empty()) {
                return Err(format!(
                    "`{g}` has an empty segment (`..` or a leading/trailing dot)"
                ));
            }
        }
        Ok(ModulePattern { globs })
    }

    /// True when the module path matches any expanded glob.
    pub fn matches(&self, module: &str) -> bool {
        self.globs
            .iter()
            .any(|g| glob(g.as_bytes(), module.as_bytes()))
    }

    /// True when the pattern has a wildcard or a range (for suggestions).
    pub fn is_generic(text: &str) -> bool {
        text.contains('*') || text.contains("..")
    }
}

/// `*` matches any run of characters other than `.`.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            if s[ss] == b'.' {
                return false;
            }
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// The module path with every all-digit segment replaced by `*` (for suggestions).
pub fn generalize(module: &str) -> String {
    module
        .split('.')
        .map(|s| {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                "*"
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alternatives_and_wildcards() {
        let p = ModulePattern::parse("encoder.layer.*.attention.self.{query,key}").unwrap();
        assert!(p.matches("encoder.layer.3.attention.self.query"));
        assert!(p.matches("encoder.layer.11.attention.self.key"));
        assert!(!p.matches("encoder.layer.3.attention.self.value"));
        assert!(!p.matches("encoder.layer.3.x.attention.self.query"));
    }

    #[test]
    fn ranges_are_end_exclusive() {
        let p = ModulePattern::parse("model.layers.{0..2}.mlp.up_proj").unwrap();
        assert!(p.matches("model.layers.0.mlp.up_proj"));
        assert!(p.matches("model.layers.1.mlp.up_proj"));
        assert!(!p.matches("model.layers.2.mlp.up_proj"));
    }

    #[test]
    fn star_stays_within_a_segment() {
        let p = ModulePattern::parse("*.dense").unwrap();
        assert!(p.matches("pooler.dense"));
        assert!(!p.matches("encoder.layer.0.output.dense"));
        let q = ModulePattern::parse("encoder.layer.0.*put.dense").unwrap();
        assert!(q.matches("encoder.layer.0.output.dense"));
    }

    #[test]
    fn bad_patterns_are_errors() {
        assert!(ModulePattern::parse("a.{}.b").is_err());
        assert!(ModulePattern::parse("a.{3..1}").is_err());
        assert!(ModulePattern::parse("a..b").is_err());
        assert!(ModulePattern::parse("a.{x..y}").is_err());
    }

    #[test]
    fn generalize_replaces_layer_numbers() {
        assert_eq!(
            generalize("encoder.layer.3.output.dense"),
            "encoder.layer.*.output.dense"
        );
    }
}
