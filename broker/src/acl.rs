//! Per-destination authorization.
//!
//! Rules come from config (`[[acl]]`), each a destination pattern with the
//! routing wildcards (`*` one segment, `#` zero or more; segments are split
//! on `/` and `.`) and placeholders `{user}` and `{claim:NAME}` (a claim that
//! is an array expands to one pattern per element), granting `subscribe`
//! and/or `send`. The first rule whose pattern covers the destination
//! decides. With no rules everything is allowed; once any rule exists,
//! anything no rule grants is denied.
//!
//! A SUBSCRIBE pattern is allowed only if the rule covers *every*
//! destination it can match: rule `/topic/order.*` allows subscribing
//! `/topic/order.*` but not `/topic/order.#`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::Identity;

/// What a rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// SUBSCRIBE.
    Subscribe,
    /// SEND.
    Send,
}

/// One `[[acl]]` rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    /// Destination pattern, e.g. `/user/{user}/queue/#` or `/topic/order.{claim:orders}`.
    pub destination: String,
    /// What the rule grants; an empty list denies.
    #[serde(default)]
    pub allow: Vec<Permission>,
}

/// The compiled rule list.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    rules: Vec<AclRule>,
}

fn tokens(s: &str) -> Vec<&str> {
    s.split(['/', '.']).collect()
}

/// Whether the rule pattern `rule` covers every destination that the
/// (possibly wildcard) destination `dest` can match. Dynamic programming
/// over segments.
fn covers(rule: &[&str], dest: &[&str]) -> bool {
    let n = dest.len();
    let mut reach = vec![false; n + 1];
    reach[0] = true;
    let mut next = vec![false; n + 1];
    for &r in rule {
        if r == "#" {
            let mut any = false;
            for j in 0..=n {
                any |= reach[j];
                next[j] = any;
            }
        } else {
            next[0] = false;
            for j in 1..=n {
                let d = dest[j - 1];
                let seg_ok = match r {
                    // `*` covers one concrete segment or a `*`, never a `#`.
                    "*" => d != "#",
                    lit => d == lit,
                };
                next[j] = reach[j - 1] && seg_ok;
            }
        }
        std::mem::swap(&mut reach, &mut next);
    }
    reach[n]
}

/// Values a placeholder stands for: none if the identity lacks it (the rule
/// then cannot match), several for an array claim.
fn placeholder_values(name: &str, who: &Identity) -> Vec<String> {
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let values: Vec<String> = if name == "user" {
        who.user.iter().cloned().collect()
    } else if let Some(claim) = name.strip_prefix("claim:") {
        match who.claims.get(claim) {
            Some(Value::Array(a)) => a.iter().filter_map(scalar).collect(),
            Some(v) => scalar(v).into_iter().collect(),
            None => Vec::new(),
        }
    } else {
        Vec::new()
    };
    // A value must be one plain segment, or it could widen the pattern.
    values
        .into_iter()
        .filter(|v| {
            !v.is_empty()
                && v != "*"
                && v != "#"
                && !v.contains(['/', '.', '{', '}'])
                && !v.chars().any(char::is_control)
        })
        .collect()
}

/// Expands `{user}` / `{claim:NAME}` into concrete patterns.
fn expand(pattern: &str, who: &Identity) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut rest = pattern;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        let name = &rest[start + 1..start + len];
        let values = placeholder_values(name, who);
        let prefix = &rest[..start];
        out = out
            .iter()
            .flat_map(|o| values.iter().map(move |v| format!("{o}{prefix}{v}")))
            .collect();
        if out.is_empty() || out.len() > 10_000 {
            return Vec::new();
        }
        rest = &rest[start + len + 1..];
    }
    for o in &mut out {
        o.push_str(rest);
    }
    out
}

impl Acl {
    /// Rules in order.
    pub fn new(rules: Vec<AclRule>) -> Acl {
        Acl { rules }
    }

    /// Whether any rule exists (then the default is deny).
    pub fn is_active(&self) -> bool {
        !self.rules.is_empty()
    }

    /// Whether `who` may do `perm` on `destination`.
    pub fn allows(&self, who: &Identity, destination: &str, perm: Permission) -> bool {
        if self.rules.is_empty() {
            return true;
        }
        let dest = tokens(destination);
        for rule in &self.rules {
            let matched = expand(&rule.destination, who)
                .iter()
                .any(|p| covers(&tokens(p), &dest));
            if matched {
                return rule.allow.contains(&perm);
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn who(user: &str, claims: Value) -> Identity {
        Identity {
            user: Some(user.into()),
            claims: claims.as_object().cloned().unwrap_or_default(),
            expires_at: None,
        }
    }

    fn rule(d: &str, allow: &[Permission]) -> AclRule {
        AclRule {
            destination: d.into(),
            allow: allow.to_vec(),
        }
    }

    #[test]
    fn claim_arrays_expand_and_wildcards_must_be_covered() {
        let acl = Acl::new(vec![
            rule("/topic/order.{claim:orders}", &[Permission::Subscribe]),
            rule(
                "/topic/public.#",
                &[Permission::Subscribe, Permission::Send],
            ),
        ]);
        let a = who("alice", json!({"orders": ["1", "2"]}));
        assert!(acl.allows(&a, "/topic/order.1", Permission::Subscribe));
        assert!(acl.allows(&a, "/topic/order.2", Permission::Subscribe));
        assert!(!acl.allows(&a, "/topic/order.3", Permission::Subscribe));
        assert!(!acl.allows(&a, "/topic/order.1", Permission::Send));
        assert!(!acl.allows(&a, "/topic/order.*", Permission::Subscribe));
        assert!(!acl.allows(&a, "/topic/order.#", Permission::Subscribe));
        assert!(acl.allows(&a, "/topic/public.x.y", Permission::Send));
        assert!(acl.allows(&a, "/topic/public.*", Permission::Subscribe));
        assert!(
            !acl.allows(&a, "/topic/other", Permission::Subscribe),
            "default deny"
        );
    }

    #[test]
    fn star_rule_does_not_cover_hash_subscription() {
        let acl = Acl::new(vec![rule("/topic/order.*", &[Permission::Subscribe])]);
        let a = who("alice", json!({}));
        assert!(acl.allows(&a, "/topic/order.*", Permission::Subscribe));
        assert!(acl.allows(&a, "/topic/order.9", Permission::Subscribe));
        assert!(!acl.allows(&a, "/topic/order.#", Permission::Subscribe));
        assert!(!acl.allows(&a, "/topic/order.9.x", Permission::Subscribe));
    }

    #[test]
    fn user_placeholder_and_hostile_values() {
        let acl = Acl::new(vec![rule("/user/{user}/#", &[Permission::Subscribe])]);
        assert!(acl.allows(
            &who("bob", json!({})),
            "/user/bob/queue/x",
            Permission::Subscribe
        ));
        assert!(!acl.allows(
            &who("bob", json!({})),
            "/user/alice/queue/x",
            Permission::Subscribe
        ));
        // A user called "#" or "a.b" must not widen the rule.
        assert!(!acl.allows(
            &who("#", json!({})),
            "/user/alice/queue/x",
            Permission::Subscribe
        ));
        assert!(!acl.allows(
            &who("alice.x", json!({})),
            "/user/alice/x/queue",
            Permission::Subscribe
        ));
        let anon = Identity::default();
        assert!(!acl.allows(&anon, "/user/bob/queue/x", Permission::Subscribe));
    }

    #[test]
    fn first_match_wins() {
        let acl = Acl::new(vec![
            rule("/topic/secret.#", &[]),
            rule("/topic/#", &[Permission::Subscribe]),
        ]);
        let a = who("a", json!({}));
        assert!(!acl.allows(&a, "/topic/secret.x", Permission::Subscribe));
        assert!(acl.allows(&a, "/topic/open", Permission::Subscribe));
    }
}
