//! Label and field selectors: parsing the string forms (`app=web,tier!=db,env in (a,b),!x`)
//! and matching them against an object's labels or fields.

use std::collections::BTreeMap;

use crate::names;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value` / `key==value`.
    Equals(String, String),
    /// `key!=value` (true when the key is absent, as in Kubernetes).
    NotEquals(String, String),
    /// `key in (a,b)`.
    In(String, Vec<String>),
    /// `key notin (a,b)` (true when the key is absent).
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
}

impl Requirement {
    /// Whether `labels` satisfy this requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }

    /// Checks the key and values are valid label syntax.
    pub fn validate(&self) -> Result<(), String> {
        let (key, values): (&str, Vec<&String>) = match self {
            Requirement::Equals(k, v) | Requirement::NotEquals(k, v) => (k, vec![v]),
            Requirement::In(k, vs) | Requirement::NotIn(k, vs) => {
                if vs.is_empty() {
                    return Err(format!("{k:?}: a set requirement needs at least one value"));
                }
                (k, vs.iter().collect())
            }
            Requirement::Exists(k) | Requirement::DoesNotExist(k) => (k, vec![]),
        };
        names::label_key(key)?;
        for v in values {
            names::label_value(v)?;
        }
        Ok(())
    }
}

/// A label selector: requirements that must all hold. Empty selects everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    /// The requirements, ANDed.
    pub requirements: Vec<Requirement>,
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("unbalanced ')'".into());
                }
            }
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '('".into());
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn parse_set(s: &str) -> Result<Vec<String>, String> {
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesised list of values, found {s:?}"))?;
    Ok(inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect())
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    let p = part.trim();
    if p.is_empty() {
        return Err("empty requirement".into());
    }
    if let Some(k) = p.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(k.trim().to_string()));
    }
    if let Some((k, v)) = p.split_once("!=") {
        return Ok(Requirement::NotEquals(k.trim().to_string(), v.trim().to_string()));
    }
    if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
        return Ok(Requirement::Equals(k.trim().to_string(), v.trim().to_string()));
    }
    let mut words = p.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or_default().to_string();
    match words.next().map(str::trim_start) {
        None => Ok(Requirement::Exists(key)),
        Some(rest) => {
            if let Some(set) = rest.strip_prefix("notin") {
                Ok(Requirement::NotIn(key, parse_set(set)?))
            } else if let Some(set) = rest.strip_prefix("in") {
                Ok(Requirement::In(key, parse_set(set)?))
            } else {
                Err(format!("expected '=', '!=', 'in' or 'notin' after {key:?}"))
            }
        }
    }
}

impl LabelSelector {
    /// Parses the string form; the error names the requirement that is wrong.
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        if s.trim().is_empty() {
            return Ok(LabelSelector::default());
        }
        let mut requirements = Vec::new();
        for part in split_top_level(s).map_err(|e| format!("label selector {s:?}: {e}"))? {
            let r = parse_requirement(part).map_err(|e| format!("label selector {s:?}: {e}"))?;
            r.validate().map_err(|e| format!("label selector {s:?}: {e}"))?;
            requirements.push(r);
        }
        Ok(LabelSelector { requirements })
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

/// One requirement of a field selector: `field=value` or `field!=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    /// The field path, e.g. `spec.nodeName`.
    pub field: String,
    /// `=` (true) or `!=` (false).
    pub equals: bool,
    /// The value compared with.
    pub value: String,
}

/// A field selector: requirements that must all hold. Which fields exist depends on the
/// kind; the caller checks them against its list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector {
    /// The requirements, ANDed.
    pub requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    /// Parses `a=b,c!=d`; only equality and inequality exist for fields.
    pub fn parse(s: &str) -> Result<FieldSelector, String> {
        if s.trim().is_empty() {
            return Ok(FieldSelector::default());
        }
        let mut requirements = Vec::new();
        for part in s.split(',') {
            let p = part.trim();
            let (field, equals, value) = if let Some((f, v)) = p.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
                (f, true, v)
            } else {
                return Err(format!("field selector {s:?}: {p:?} is not field=value or field!=value"));
            };
            let field = field.trim();
            if field.is_empty() {
                return Err(format!("field selector {s:?}: empty field name in {p:?}"));
            }
            requirements.push(FieldRequirement { field: field.to_string(), equals, value: value.trim().to_string() });
        }
        Ok(FieldSelector { requirements })
    }

    /// Whether the object whose field values `get` returns satisfies every requirement.
    pub fn matches(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.requirements.iter().all(|r| (get(&r.field).unwrap_or_default() == r.value) == r.equals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn label_selector_parsing_table() {
        use Requirement::*;
        let s = |x: &str| x.to_string();
        let cases: Vec<(&str, Vec<Requirement>)> = vec![
            ("", vec![]),
            ("app=web", vec![Equals(s("app"), s("web"))]),
            ("app==web", vec![Equals(s("app"), s("web"))]),
            ("tier!=db", vec![NotEquals(s("tier"), s("db"))]),
            ("env in (a, b)", vec![In(s("env"), vec![s("a"), s("b")])]),
            ("env notin (a)", vec![NotIn(s("env"), vec![s("a")])]),
            ("gpu", vec![Exists(s("gpu"))]),
            ("!legacy", vec![DoesNotExist(s("legacy"))]),
            (
                "app=web, env in (a,b),!legacy",
                vec![Equals(s("app"), s("web")), In(s("env"), vec![s("a"), s("b")]), DoesNotExist(s("legacy"))],
            ),
            ("app=", vec![Equals(s("app"), s(""))]),
        ];
        for (text, want) in cases {
            assert_eq!(LabelSelector::parse(text).map(|l| l.requirements), Ok(want), "{text}");
        }
    }

    #[test]
    fn malformed_label_selectors_are_refused_with_the_reason() {
        for (text, why) in [
            ("env in (a,b", "unbalanced"),
            ("env in a,b)", "unbalanced"),
            ("env between (a)", "expected"),
            ("env in ()", "at least one value"),
            ("-bad=x", "key"),
            ("app=a b", "value"),
            ("app=web,,x=y", "empty requirement"),
            ("env in a", "parenthesised"),
        ] {
            let e = LabelSelector::parse(text).expect_err(text);
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn label_selector_matching_table() {
        let l = labels(&[("app", "web"), ("env", "prod")]);
        for (sel, want) in [
            ("", true),
            ("app=web", true),
            ("app=db", false),
            ("app!=db", true),
            ("missing!=x", true),
            ("env in (prod,dev)", true),
            ("env notin (prod)", false),
            ("missing notin (x)", true),
            ("app", true),
            ("!app", false),
            ("!missing,app=web,env in (prod)", true),
        ] {
            assert_eq!(LabelSelector::parse(sel).expect(sel).matches(&l), want, "{sel}");
        }
    }

    #[test]
    fn field_selector_parsing_and_matching() {
        let f = FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed").expect("parse");
        let get = |phase: &'static str| {
            move |field: &str| match field {
                "spec.nodeName" => Some("n1".to_string()),
                "status.phase" => Some(phase.to_string()),
                _ => None,
            }
        };
        assert!(f.matches(get("Running")));
        assert!(!f.matches(get("Failed")));
        assert!(FieldSelector::parse("spec.nodeName").is_err());
        assert!(FieldSelector::parse("=x").is_err());
        assert!(FieldSelector::parse("spec.nodeName=").expect("empty value").matches(|_| None));
    }
}
