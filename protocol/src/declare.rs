//! What a module declares about itself (issue 12): its methods (name, whether guests may
//! call them, one line saying what each does), whether a catch-all handler answers the
//! others, and the events it publishes (topic and one line). One shape for every way a
//! declaration travels: the `SERVICE.methods` answer (RFC 3 §5.1), the native module table
//! (RFC 2 §3.1), the process hello (RFC 5 §3), the WIT `declare` export (RFC 6 §2), and the
//! `declares` of `module.info` / `module.list` (RFC 3 §3.10, §3.11).
//!
//! This file owns the types and the rules a declaration must pass (`Declarations::checked`);
//! it must not know how any module kind carries them.

use serde::{Deserialize, Serialize};

/// The most methods, and the most events, one module may declare.
pub const MAX_DECLARED: usize = 1024;
/// The longest method name, event topic or doc line, in bytes.
pub const MAX_DECLARED_TEXT: usize = 1024;

/// A module's declarations: `SERVICE.methods`'s answer, and `declares` in `module.info` and
/// `module.list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Declarations {
    /// By name, in byte order.
    #[serde(default)]
    pub methods: Vec<MethodDecl>,
    /// Whether it also answers methods it does not list (a catch-all handler).
    #[serde(default)]
    pub otherwise: bool,
    /// The events it publishes, by topic in byte order.
    #[serde(default)]
    pub events: Vec<EventDecl>,
}

/// One declared method.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MethodDecl {
    /// The part of the topic after the service: `get` for `kvs.get`.
    pub name: String,
    /// Whether guests (other local users) may call it.
    pub guest: bool,
    /// One line saying what it does; empty if the author wrote none.
    #[serde(default)]
    pub doc: String,
}

/// One declared event: a topic the module publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventDecl {
    /// The whole topic, `kvs.changed`.
    pub name: String,
    /// One line saying when it is published and what its payload holds; may be empty.
    #[serde(default)]
    pub doc: String,
}

/// Why a declaration was refused; the text names the entry at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeclarationError {
    #[error("it declares {count} {what}s; at most {MAX_DECLARED} are allowed")]
    TooMany { what: &'static str, count: usize },
    #[error("{what} '{name}' is declared twice")]
    Twice { what: &'static str, name: String },
    #[error("{what} name {name:?} {why}")]
    BadName { what: &'static str, name: String, why: &'static str },
    #[error("the doc of {what} '{name}' {why}")]
    BadDoc { what: &'static str, name: String, why: &'static str },
}

impl Declarations {
    /// Nothing declared (what a module that says nothing about itself shows).
    pub fn is_empty(&self) -> bool {
        self.methods.is_empty() && self.events.is_empty() && !self.otherwise
    }

    /// The declaration in order (methods and events by name, in byte order), or why it is
    /// refused: more than `MAX_DECLARED` entries of a kind, a name twice, a name that is
    /// empty or has spaces or control characters, a name or doc longer than
    /// `MAX_DECLARED_TEXT` bytes, or a doc that is not one line.
    pub fn checked(mut self) -> Result<Declarations, DeclarationError> {
        self.methods.sort_by(|a, b| a.name.cmp(&b.name));
        self.events.sort_by(|a, b| a.name.cmp(&b.name));
        let methods = self.methods.iter().map(|m| (m.name.as_str(), m.doc.as_str()));
        check_entries("method", methods)?;
        check_entries("event", self.events.iter().map(|e| (e.name.as_str(), e.doc.as_str())))?;
        Ok(self)
    }
}

/// `entries` (name, doc), sorted by name, against the rules of `Declarations::checked`.
fn check_entries<'a>(
    what: &'static str,
    entries: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
) -> Result<(), DeclarationError> {
    if entries.len() > MAX_DECLARED {
        return Err(DeclarationError::TooMany { what, count: entries.len() });
    }
    let mut last: Option<&str> = None;
    for (name, doc) in entries {
        let bad_name = |why| DeclarationError::BadName { what, name: name.to_string(), why };
        if name.is_empty() {
            return Err(bad_name("is empty"));
        }
        if name.len() > MAX_DECLARED_TEXT {
            return Err(bad_name("is longer than 1024 bytes"));
        }
        if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad_name("has a space or a control character"));
        }
        if last == Some(name) {
            return Err(DeclarationError::Twice { what, name: name.to_string() });
        }
        last = Some(name);
        let bad_doc = |why| DeclarationError::BadDoc { what, name: name.to_string(), why };
        if doc.len() > MAX_DECLARED_TEXT {
            return Err(bad_doc("is longer than 1024 bytes"));
        }
        if doc.chars().any(char::is_control) {
            return Err(bad_doc("is not one line (it has a line break or a control character)"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn method(name: &str, doc: &str) -> MethodDecl {
        MethodDecl { name: name.into(), guest: false, doc: doc.into() }
    }

    #[test]
    fn a_declaration_is_put_in_order_and_checked() {
        let d = Declarations {
            methods: vec![method("put", "set a key"), method("get", "")],
            otherwise: false,
            events: vec![EventDecl { name: "kvs.changed".into(), doc: "a key changed".into() }],
        };
        let d = d.checked().unwrap();
        assert_eq!(d.methods.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["get", "put"]);

        let twice = Declarations { methods: vec![method("get", ""), method("get", "")], ..Default::default() };
        assert_eq!(twice.checked().unwrap_err().to_string(), "method 'get' is declared twice");
        let spaced = Declarations { methods: vec![method("a b", "")], ..Default::default() };
        assert_eq!(spaced.checked().unwrap_err().to_string(), "method name \"a b\" has a space or a control character");
        let empty =
            Declarations { events: vec![EventDecl { name: String::new(), doc: String::new() }], ..Default::default() };
        assert_eq!(empty.checked().unwrap_err().to_string(), "event name \"\" is empty");
        let lines = Declarations { methods: vec![method("get", "one\ntwo")], ..Default::default() };
        assert_eq!(
            lines.checked().unwrap_err().to_string(),
            "the doc of method 'get' is not one line (it has a line break or a control character)"
        );
        let many = Declarations {
            methods: (0..=MAX_DECLARED).map(|i| method(&i.to_string(), "")).collect(),
            ..Default::default()
        };
        assert_eq!(many.checked().unwrap_err().to_string(), "it declares 1025 methods; at most 1024 are allowed");
    }

    #[test]
    fn an_answer_without_events_still_decodes() {
        // What `SERVICE.methods` answered before events were declared.
        let old = rmp_serde::to_vec_named(
            &serde_json::json!({"methods": [{"name": "get", "guest": true, "doc": "x"}], "otherwise": true}),
        )
        .unwrap();
        let d: Declarations = rmp_serde::from_slice(&old).unwrap();
        assert_eq!(d.methods, vec![MethodDecl { name: "get".into(), guest: true, doc: "x".into() }]);
        assert!(d.otherwise && d.events.is_empty());
    }
}
