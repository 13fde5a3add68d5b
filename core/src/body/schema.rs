//! Request body validation (`routes[].body_schema`): the subset of JSON Schema (2020-12) that
//! gateways need, compiled once at plugin start.
//!
//! Supported keywords: `type` (one name or an array of names), `properties`, `required`,
//! `additionalProperties` (boolean or schema), `minLength`/`maxLength` (Unicode code points),
//! `pattern`, `enum`, `minimum`/`maximum`, `items` (one schema), `minItems`/`maxItems`,
//! `format: "email"`, and boolean schemas (`true`/`false`). `$schema`, `$comment`, `title`,
//! `description` and `examples` are accepted as annotations. Any other keyword is a config error:
//! a standard validator would silently ignore `"minimun": 3` or `"$ref"`, and a gateway that
//! silently checks less than its operator wrote is worse than one that refuses to start.
//!
//! Differences from a full validator, all on the side of refusing at config time:
//! - `pattern` uses the `regex-lite` syntax, not ECMA-262: no `\p{..}` classes, no `\cX`, no
//!   look-around or backreferences (a pattern that does not compile is a config error, never
//!   misread). `\d`, `\w` and `\b` are ASCII in both; `\s`/`\S` are rewritten to ECMA-262's
//!   set (Unicode spaces and line terminators included), so that `^\S+$` keeps refusing a
//!   no-break space. Remaining difference: `.` also matches `\r`, U+2028 and U+2029, which
//!   ECMA's `.` does not. Matching is an unanchored search, as JSON Schema specifies, in time
//!   linear in the string (no ReDoS).
//! - `format` is an assertion (2020-12 treats it as an annotation by default), and `email` is the
//!   only format: unknown formats are config errors rather than ignored.
//! - Empty `enum`, and `min*` greater than `max*`, are config errors (nothing could ever pass).
//! - `items` must be one schema: the tuple (array) form of older drafts is a config error.
//!
//! The threats: the validator runs on attacker-chosen bodies, so its work is bounded (schema
//! depth at most [`MAX_SCHEMA_DEPTH`], so the walk of the body is too; at most [`MAX_ERRORS`]
//! errors; string lengths are checked before patterns), duplicate object keys are refused (the
//! upstream might read the other copy), and error messages never echo a rejected value.

use crate::body::strict_json;
use crate::config::error::{index, join, ConfigError};
use regex_lite::{Regex, RegexBuilder};
use serde::Serialize;
use serde_json::{Map, Number, Value};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

pub const MAX_SCHEMA_DEPTH: usize = 64;
pub const MAX_ERRORS: usize = 20;
const MAX_PATTERN_BYTES: usize = 1024;
/// Compiled size bound per pattern: search time is proportional to it times the string length.
const PATTERN_SIZE_LIMIT: usize = 256 * 1024;
/// A field path built from a client's own object keys could be as long as the body; it is cut.
const MAX_FIELD_PATH_BYTES: usize = 256;

/// One problem with a request body, as sent to the client in `details`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Where: property names joined with `.`, array indexes as `[i]` (`items[2].name`); empty
    /// for the body itself.
    pub field: String,
    /// What is wrong, in terms of the schema; never the rejected value.
    pub message: String,
}

/// A compiled `body_schema`.
#[derive(Debug)]
pub struct BodySchema {
    root: Node,
}

#[derive(Debug)]
enum Node {
    /// `true` or `{}`.
    Anything,
    /// `false`.
    Nothing,
    Rules(Box<Rules>),
}

#[derive(Debug, Default)]
struct Rules {
    /// Allowed types, in the order the schema lists them (for the message).
    types: Option<Vec<JsonType>>,
    enum_values: Option<Vec<Value>>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    pattern: Option<Regex>,
    format_email: bool,
    minimum: Option<Number>,
    maximum: Option<Number>,
    min_items: Option<u64>,
    max_items: Option<u64>,
    items: Option<Node>,
    properties: BTreeMap<String, Node>,
    required: Vec<String>,
    additional_properties: Option<Node>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonType {
    Null,
    Boolean,
    Object,
    Array,
    Number,
    Integer,
    String,
}

impl JsonType {
    fn parse(name: &str) -> Option<JsonType> {
        Some(match name {
            "null" => JsonType::Null,
            "boolean" => JsonType::Boolean,
            "object" => JsonType::Object,
            "array" => JsonType::Array,
            "number" => JsonType::Number,
            "integer" => JsonType::Integer,
            "string" => JsonType::String,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            JsonType::Null => "null",
            JsonType::Boolean => "boolean",
            JsonType::Object => "object",
            JsonType::Array => "array",
            JsonType::Number => "number",
            JsonType::Integer => "integer",
            JsonType::String => "string",
        }
    }

    fn with_article(self) -> &'static str {
        match self {
            JsonType::Null => "null",
            JsonType::Boolean => "a boolean",
            JsonType::Object => "an object",
            JsonType::Array => "an array",
            JsonType::Number => "a number",
            JsonType::Integer => "an integer",
            JsonType::String => "a string",
        }
    }

    fn matches(self, value: &Value) -> bool {
        match (self, value) {
            (JsonType::Null, Value::Null)
            | (JsonType::Boolean, Value::Bool(_))
            | (JsonType::Object, Value::Object(_))
            | (JsonType::Array, Value::Array(_))
            | (JsonType::Number, Value::Number(_))
            | (JsonType::String, Value::String(_)) => true,
            // 2020-12: an integer is any number with a zero fractional part, `1.0` included.
            (JsonType::Integer, Value::Number(n)) => is_integral(n),
            _ => false,
        }
    }
}

impl BodySchema {
    /// Compiles a schema; `at` is its JSON path in the plugin config
    /// (`routes[2].body_schema`), and every error names the path of the offending keyword.
    pub fn compile(schema: &Value, at: &str) -> Result<BodySchema, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let root = compile_node(schema, at, 0, &mut errors);
        if errors.is_empty() {
            Ok(BodySchema { root })
        } else {
            Err(errors)
        }
    }

    /// Validates a raw request body. A body that is not JSON (or repeats a key in an object)
    /// gives one error for the field `""`.
    pub fn validate(&self, body: &[u8]) -> Result<(), Vec<FieldError>> {
        match strict_json::from_slice(body) {
            Ok(value) => self.validate_value(&value),
            Err(_) => Err(vec![FieldError {
                field: String::new(),
                message: "must be valid JSON".into(),
            }]),
        }
    }

    /// Validates an already parsed value; at most [`MAX_ERRORS`] errors are reported.
    pub fn validate_value(&self, value: &Value) -> Result<(), Vec<FieldError>> {
        let mut walk = Walk::default();
        walk.check(&self.root, value);
        if walk.errors.is_empty() {
            Ok(())
        } else {
            Err(walk.errors)
        }
    }
}

// ---- compilation ---------------------------------------------------------------------------

fn compile_node(schema: &Value, at: &str, depth: usize, errors: &mut Vec<ConfigError>) -> Node {
    if depth > MAX_SCHEMA_DEPTH {
        errors.push(ConfigError::new(
            at,
            format!("schema is nested more than {MAX_SCHEMA_DEPTH} levels deep"),
        ));
        return Node::Nothing;
    }
    let keywords = match schema {
        Value::Bool(true) => return Node::Anything,
        Value::Bool(false) => return Node::Nothing,
        Value::Object(keywords) => keywords,
        _ => {
            errors.push(ConfigError::new(
                at,
                "a schema must be an object or a boolean",
            ));
            return Node::Nothing;
        }
    };
    if keywords.is_empty() {
        return Node::Anything;
    }
    let mut rules = Rules::default();
    for (keyword, value) in keywords {
        let here = join(at, keyword);
        match keyword.as_str() {
            "$schema" | "$comment" | "title" | "description" => {
                if !value.is_string() {
                    errors.push(ConfigError::new(&here, "must be a string"));
                }
            }
            "examples" => {
                if !value.is_array() {
                    errors.push(ConfigError::new(&here, "must be an array"));
                }
            }
            "type" => rules.types = compile_types(value, &here, errors),
            "enum" => match value {
                Value::Array(values) if !values.is_empty() => {
                    rules.enum_values = Some(values.clone())
                }
                _ => errors.push(ConfigError::new(&here, "must be a non-empty array")),
            },
            "minLength" => rules.min_length = non_negative_integer(value, &here, errors),
            "maxLength" => rules.max_length = non_negative_integer(value, &here, errors),
            "minItems" => rules.min_items = non_negative_integer(value, &here, errors),
            "maxItems" => rules.max_items = non_negative_integer(value, &here, errors),
            "minimum" => rules.minimum = number(value, &here, errors),
            "maximum" => rules.maximum = number(value, &here, errors),
            "pattern" => rules.pattern = compile_pattern(value, &here, errors),
            "format" => match value.as_str() {
                Some("email") => rules.format_email = true,
                Some(other) => errors.push(ConfigError::new(
                    &here,
                    format!("unsupported format {other:?} (only \"email\" is supported)"),
                )),
                None => errors.push(ConfigError::new(&here, "must be a string")),
            },
            "items" => {
                if value.is_array() {
                    errors.push(ConfigError::new(
                        &here,
                        "must be one schema (the tuple form is not supported)",
                    ));
                } else {
                    rules.items = Some(compile_node(value, &here, depth + 1, errors));
                }
            }
            "properties" => match value {
                Value::Object(properties) => {
                    for (name, property_schema) in properties {
                        let node =
                            compile_node(property_schema, &join(&here, name), depth + 1, errors);
                        rules.properties.insert(name.clone(), node);
                    }
                }
                _ => errors.push(ConfigError::new(&here, "must be an object of schemas")),
            },
            "required" => rules.required = compile_required(value, &here, errors),
            "additionalProperties" => {
                rules.additional_properties = Some(compile_node(value, &here, depth + 1, errors))
            }
            _ => errors.push(ConfigError::new(
                &here,
                "unsupported JSON Schema keyword (supported: type, properties, required, \
                 additionalProperties, minLength, maxLength, pattern, enum, minimum, maximum, \
                 items, minItems, maxItems, format)",
            )),
        }
    }
    check_bounds(&rules, at, errors);
    Node::Rules(Box::new(rules))
}

fn compile_types(value: &Value, at: &str, errors: &mut Vec<ConfigError>) -> Option<Vec<JsonType>> {
    const EXPECTED: &str =
        "must be one of null, boolean, object, array, number, integer, string, or an array of them";
    let names: Vec<&Value> = match value {
        Value::String(_) => vec![value],
        Value::Array(names) if !names.is_empty() => names.iter().collect(),
        _ => {
            errors.push(ConfigError::new(at, EXPECTED));
            return None;
        }
    };
    let mut types = Vec::with_capacity(names.len());
    for name in names {
        match name.as_str().and_then(JsonType::parse) {
            Some(t) if !types.contains(&t) => types.push(t),
            Some(_) => {
                errors.push(ConfigError::new(at, "lists a type twice"));
                return None;
            }
            None => {
                errors.push(ConfigError::new(at, EXPECTED));
                return None;
            }
        }
    }
    Some(types)
}

fn compile_required(value: &Value, at: &str, errors: &mut Vec<ConfigError>) -> Vec<String> {
    let Value::Array(names) = value else {
        errors.push(ConfigError::new(at, "must be an array of property names"));
        return Vec::new();
    };
    let mut required: Vec<String> = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        match name.as_str() {
            Some(name) if !required.iter().any(|r| r == name) => required.push(name.to_string()),
            Some(_) => errors.push(ConfigError::new(index(at, i), "is listed twice")),
            None => errors.push(ConfigError::new(index(at, i), "must be a string")),
        }
    }
    required
}

/// 2020-12 allows `2.0` where a non-negative integer is expected.
fn non_negative_integer(value: &Value, at: &str, errors: &mut Vec<ConfigError>) -> Option<u64> {
    let parsed = match value {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f <= u64::MAX as f64)
                .map(|f| f as u64)
        }),
        _ => None,
    };
    if parsed.is_none() {
        errors.push(ConfigError::new(at, "must be a non-negative integer"));
    }
    parsed
}

fn number(value: &Value, at: &str, errors: &mut Vec<ConfigError>) -> Option<Number> {
    match value {
        Value::Number(n) => Some(n.clone()),
        _ => {
            errors.push(ConfigError::new(at, "must be a number"));
            None
        }
    }
}

fn compile_pattern(value: &Value, at: &str, errors: &mut Vec<ConfigError>) -> Option<Regex> {
    let Some(pattern) = value.as_str() else {
        errors.push(ConfigError::new(at, "must be a string"));
        return None;
    };
    if pattern.len() > MAX_PATTERN_BYTES {
        errors.push(ConfigError::new(
            at,
            format!("must be at most {MAX_PATTERN_BYTES} bytes"),
        ));
        return None;
    }
    let translated = match ecma_whitespace_classes(pattern) {
        Ok(translated) => translated,
        Err(reason) => {
            errors.push(ConfigError::new(
                at,
                format!("is not a supported regular expression ({reason})"),
            ));
            return None;
        }
    };
    match RegexBuilder::new(&translated)
        .size_limit(PATTERN_SIZE_LIMIT)
        .build()
    {
        Ok(regex) => Some(regex),
        Err(e) => {
            let detail = e.to_string();
            let summary = detail.lines().last().unwrap_or_default().trim();
            errors.push(ConfigError::new(
                at,
                format!(
                    "is not a supported regular expression ({summary}; the regex-lite syntax \
                     is used: no \\p{{..}} classes, look-around or backreferences)"
                ),
            ));
            None
        }
    }
}

/// ECMA-262 `WhiteSpace` and `LineTerminator`, which `\s` means in a JSON Schema pattern;
/// regex-lite's `\s` is ASCII only.
const ECMA_WHITESPACE: &str = r"\t\n\x0B\x0C\r \x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}\x{FEFF}";

/// Rewrites `\s` and `\S` (not `\\s`) to ECMA-262's sets. Outside a bracket class they become
/// a class of their own; inside one, `\s` contributes its ranges. regex-lite has no nested
/// classes, so a negated set cannot be placed inside a class: `\S` there is refused rather than
/// left with regex-lite's ASCII meaning.
fn ecma_whitespace_classes(pattern: &str) -> Result<String, &'static str> {
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.chars().peekable();
    let mut in_class = false;
    // Just after `[` or `[^`, where a `]` is a literal in regex-lite.
    let mut class_start = false;
    while let Some(c) = chars.next() {
        let at_class_start = std::mem::take(&mut class_start);
        match c {
            '\\' => match chars.next() {
                Some('s') if in_class => out.push_str(ECMA_WHITESPACE),
                Some('s') => {
                    out.push('[');
                    out.push_str(ECMA_WHITESPACE);
                    out.push(']');
                }
                Some('S') if in_class => {
                    return Err("\\S inside a character class is not supported")
                }
                Some('S') => {
                    out.push_str("[^");
                    out.push_str(ECMA_WHITESPACE);
                    out.push(']');
                }
                Some(escaped) => {
                    out.push('\\');
                    out.push(escaped);
                }
                None => out.push('\\'),
            },
            '[' if !in_class => {
                in_class = true;
                class_start = true;
                out.push('[');
                if chars.peek() == Some(&'^') {
                    chars.next();
                    out.push('^');
                }
            }
            ']' if in_class && !at_class_start => {
                in_class = false;
                out.push(']');
            }
            _ => out.push(c),
        }
    }
    Ok(out)
}

/// A minimum above its maximum can never pass: surely a mistake in the config.
fn check_bounds(rules: &Rules, at: &str, errors: &mut Vec<ConfigError>) {
    let contradiction = |low: &str, high: &str| {
        ConfigError::new(
            at,
            format!("{low} is greater than {high}: nothing could pass"),
        )
    };
    if let (Some(min), Some(max)) = (rules.min_length, rules.max_length) {
        if min > max {
            errors.push(contradiction("minLength", "maxLength"));
        }
    }
    if let (Some(min), Some(max)) = (rules.min_items, rules.max_items) {
        if min > max {
            errors.push(contradiction("minItems", "maxItems"));
        }
    }
    if let (Some(min), Some(max)) = (&rules.minimum, &rules.maximum) {
        if compare_numbers(min, max) == Some(Ordering::Greater) {
            errors.push(contradiction("minimum", "maximum"));
        }
    }
}

// ---- validation ----------------------------------------------------------------------------

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

#[derive(Default)]
struct Walk<'a> {
    path: Vec<Segment<'a>>,
    errors: Vec<FieldError>,
}

impl<'a> Walk<'a> {
    fn full(&self) -> bool {
        self.errors.len() >= MAX_ERRORS
    }

    fn report(&mut self, message: String) {
        if self.full() {
            return;
        }
        self.errors.push(FieldError {
            field: self.render_path(),
            message,
        });
    }

    fn render_path(&self) -> String {
        let mut field = String::new();
        for segment in &self.path {
            match segment {
                Segment::Key(key) => field = join(&field, key),
                Segment::Index(i) => field = index(&field, *i),
            }
        }
        if field.len() > MAX_FIELD_PATH_BYTES {
            let mut cut = MAX_FIELD_PATH_BYTES;
            while !field.is_char_boundary(cut) {
                cut -= 1;
            }
            field.truncate(cut);
            field.push_str("...");
        }
        field
    }

    fn check(&mut self, node: &'a Node, value: &'a Value) {
        if self.full() {
            return;
        }
        match node {
            Node::Anything => {}
            Node::Nothing => self.report("is not allowed".into()),
            Node::Rules(rules) => self.check_rules(rules, value),
        }
    }

    fn check_rules(&mut self, rules: &'a Rules, value: &'a Value) {
        if let Some(types) = &rules.types {
            if !types.iter().any(|t| t.matches(value)) {
                // The other keywords would only add noise about a value of the wrong type.
                self.report(type_message(types));
                return;
            }
        }
        if let Some(allowed) = &rules.enum_values {
            if !allowed.iter().any(|candidate| json_equal(candidate, value)) {
                self.report("must be one of the allowed values".into());
            }
        }
        match value {
            Value::String(text) => self.check_string(rules, text),
            Value::Number(n) => self.check_number(rules, n),
            Value::Array(items) => self.check_array(rules, items),
            Value::Object(object) => self.check_object(rules, object),
            Value::Null | Value::Bool(_) => {}
        }
    }

    fn check_string(&mut self, rules: &Rules, text: &str) {
        let length = text.chars().count() as u64;
        let mut length_ok = true;
        if let Some(min) = rules.min_length {
            if length < min {
                length_ok = false;
                self.report(format!("must be at least {min} characters long"));
            }
        }
        if let Some(max) = rules.max_length {
            if length > max {
                length_ok = false;
                self.report(format!("must be at most {max} characters long"));
            }
        }
        // A pattern search costs time proportional to the string: skip it on strings the length
        // limits already refused.
        if let (Some(pattern), true) = (&rules.pattern, length_ok) {
            if !pattern.is_match(text) {
                self.report("does not match the required pattern".into());
            }
        }
        if rules.format_email && !is_email(text) {
            self.report("must be a valid email address".into());
        }
    }

    fn check_number(&mut self, rules: &Rules, n: &Number) {
        if let Some(min) = &rules.minimum {
            if compare_numbers(n, min).is_none_or(|o| o == Ordering::Less) {
                self.report(format!("must be greater than or equal to {min}"));
            }
        }
        if let Some(max) = &rules.maximum {
            if compare_numbers(n, max).is_none_or(|o| o == Ordering::Greater) {
                self.report(format!("must be less than or equal to {max}"));
            }
        }
    }

    fn check_array(&mut self, rules: &'a Rules, items: &'a [Value]) {
        let count = items.len() as u64;
        if let Some(min) = rules.min_items {
            if count < min {
                self.report(format!("must have at least {min} items"));
            }
        }
        if let Some(max) = rules.max_items {
            if count > max {
                self.report(format!("must have at most {max} items"));
            }
        }
        if let Some(item_schema) = &rules.items {
            for (i, item) in items.iter().enumerate() {
                if self.full() {
                    break;
                }
                self.path.push(Segment::Index(i));
                self.check(item_schema, item);
                self.path.pop();
            }
        }
    }

    fn check_object(&mut self, rules: &'a Rules, object: &'a Map<String, Value>) {
        for name in &rules.required {
            if !object.contains_key(name) {
                self.path.push(Segment::Key(name));
                self.report("is required".into());
                self.path.pop();
            }
        }
        for (key, value) in object {
            if self.full() {
                break;
            }
            let schema = match rules.properties.get(key) {
                Some(schema) => schema,
                None => match &rules.additional_properties {
                    Some(Node::Nothing) => {
                        self.path.push(Segment::Key(key));
                        self.report("is not an allowed field".into());
                        self.path.pop();
                        continue;
                    }
                    Some(schema) => schema,
                    None => continue,
                },
            };
            self.path.push(Segment::Key(key));
            self.check(schema, value);
            self.path.pop();
        }
    }
}

fn type_message(types: &[JsonType]) -> String {
    match types {
        [single] => format!("must be {}", single.with_article()),
        _ => {
            let names: Vec<&str> = types.iter().map(|t| t.name()).collect();
            format!("must be one of the types {}", names.join(", "))
        }
    }
}

fn is_integral(n: &Number) -> bool {
    n.is_i64()
        || n.is_u64()
        || n.as_f64()
            .is_some_and(|f| f.is_finite() && f.fract() == 0.0)
}

fn as_i128(n: &Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

/// Mathematical order of two JSON numbers: exact between integers, as doubles otherwise.
fn compare_numbers(a: &Number, b: &Number) -> Option<Ordering> {
    if let (Some(x), Some(y)) = (as_i128(a), as_i128(b)) {
        return Some(x.cmp(&y));
    }
    a.as_f64()?.partial_cmp(&b.as_f64()?)
}

/// JSON Schema equality: `1` equals `1.0`, object key order does not matter, `false` is not `0`.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y) == Some(Ordering::Equal),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(key, p)| y.get(key).is_some_and(|q| json_equal(p, q)))
        }
        _ => a == b,
    }
}

/// `format: email`, pragmatically: RFC 5321 mailbox syntax without comments or folding white
/// space. Local part: a dot-atom (RFC 5322 `atext` characters, no leading, trailing or doubled
/// dot) or a quoted string of printable ASCII; at most 64 bytes. Domain: a hostname (labels of
/// letters, digits and inner hyphens, 1 to 63 bytes each, 253 in all; no dot required, as RFC
/// 5321 allows) or an address literal `[192.0.2.1]` / `[IPv6:2001:db8::1]`. At most 254 bytes
/// overall. ASCII only (internationalised addresses are `idn-email`, not supported). It says
/// nothing about whether the mailbox exists.
fn is_email(address: &str) -> bool {
    if address.len() > 254 {
        return false;
    }
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    is_email_local_part(local) && is_email_domain(domain)
}

fn is_email_local_part(local: &str) -> bool {
    if local.is_empty() || local.len() > 64 {
        return false;
    }
    if let Some(quoted) = local.strip_prefix('"') {
        let Some(inner) = quoted.strip_suffix('"') else {
            return false;
        };
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if !chars.next().is_some_and(|e| (' '..='~').contains(&e)) {
                        return false;
                    }
                }
                '"' => return false,
                ' '..='~' => {}
                _ => return false,
            }
        }
        return true;
    }
    local.split('.').all(|atom| {
        !atom.is_empty()
            && atom
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c))
    })
}

fn is_email_domain(domain: &str) -> bool {
    if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        return match literal.strip_prefix("IPv6:") {
            Some(v6) => v6.parse::<Ipv6Addr>().is_ok(),
            None => literal.parse::<Ipv4Addr>().is_ok(),
        };
    }
    !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(value: Value) -> BodySchema {
        BodySchema::compile(&value, "routes[0].body_schema").unwrap()
    }

    fn errors(value: Value) -> Vec<String> {
        BodySchema::compile(&value, "routes[2].body_schema")
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    fn fields(result: Result<(), Vec<FieldError>>) -> Vec<(String, String)> {
        result
            .unwrap_err()
            .into_iter()
            .map(|e| (e.field, e.message))
            .collect()
    }

    fn create_user() -> BodySchema {
        // The guide's Zod example, as a JSON Schema.
        schema(json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "create user",
            "type": "object",
            "required": ["email", "name", "password"],
            "additionalProperties": false,
            "properties": {
                "email": { "type": "string", "format": "email", "maxLength": 254 },
                "name": { "type": "string", "minLength": 1, "maxLength": 100,
                          "pattern": "^[a-zA-Z\\s'-]+$" },
                "password": { "type": "string", "minLength": 12, "maxLength": 128 },
                "role": { "enum": ["viewer", "editor"] },
                "age": { "type": "integer", "minimum": 13, "maximum": 150 },
                "tags": { "type": "array", "maxItems": 3,
                          "items": { "type": "object", "required": ["name"],
                                     "properties": { "name": { "type": "string" } } } }
            }
        }))
    }

    #[test]
    fn a_valid_body_passes() {
        let body = br#"{"email":"ada@example.com","name":"Ada Lovelace","password":"correct horse battery",
                       "role":"editor","age":36,"tags":[{"name":"x"}]}"#;
        assert_eq!(create_user().validate(body), Ok(()));
    }

    #[test]
    fn errors_name_the_field_and_never_echo_the_value() {
        let body = br#"{"email":"SECRET-not-an-email","name":"Robert'); DROP TABLE--",
                       "password":"short","role":"owner","age":12.5,"isAdmin":true,
                       "tags":[{"name":"a"},{"name":7},{}]}"#;
        let found = fields(create_user().validate(body));
        assert_eq!(
            found,
            vec![
                ("age".into(), "must be an integer".into()),
                ("email".into(), "must be a valid email address".into()),
                ("isAdmin".into(), "is not an allowed field".into()),
                ("name".into(), "does not match the required pattern".into()),
                (
                    "password".into(),
                    "must be at least 12 characters long".into()
                ),
                ("role".into(), "must be one of the allowed values".into()),
                ("tags[1].name".into(), "must be a string".into()),
                ("tags[2].name".into(), "is required".into()),
            ]
        );
        let serialized = serde_json::to_string(&create_user().validate(body).unwrap_err()).unwrap();
        for secret in ["SECRET", "DROP", "short", "owner", "12.5"] {
            assert!(!serialized.contains(secret), "{serialized}");
        }
    }

    #[test]
    fn missing_required_fields_and_non_json_bodies() {
        assert_eq!(
            fields(create_user().validate(b"{}")),
            vec![
                ("email".into(), "is required".into()),
                ("name".into(), "is required".into()),
                ("password".into(), "is required".into()),
            ]
        );
        for body in [
            &b""[..],
            b"{",
            b"not json",
            br#"{"email":"a@b.c","email":"x"}"#,
        ] {
            assert_eq!(
                fields(create_user().validate(body)),
                vec![(String::new(), "must be valid JSON".into())]
            );
        }
        assert_eq!(
            fields(create_user().validate(b"[]")),
            vec![(String::new(), "must be an object".into())]
        );
    }

    #[test]
    fn errors_stop_at_the_limit() {
        let s = schema(json!({"type": "array", "items": {"type": "string"}}));
        let body = serde_json::to_vec(&vec![1; 1000]).unwrap();
        let found = s.validate(&body).unwrap_err();
        assert_eq!(found.len(), MAX_ERRORS);
        assert_eq!(found[0].field, "[0]");
        assert_eq!(found[19].field, "[19]");
    }

    #[test]
    fn lengths_count_code_points() {
        let s = schema(json!({"type": "string", "minLength": 2, "maxLength": 3}));
        assert!(s.validate_value(&json!("é")).is_err());
        assert!(s.validate_value(&json!("éé")).is_ok());
        assert!(s.validate_value(&json!("🐲🐲🐲")).is_ok());
        assert!(s.validate_value(&json!("🐲🐲🐲🐲")).is_err());
    }

    #[test]
    fn pattern_is_an_unanchored_search() {
        let s = schema(json!({"pattern": "b+"}));
        assert!(s.validate_value(&json!("abbbc")).is_ok());
        assert!(s.validate_value(&json!("ac")).is_err());
        assert!(s.validate_value(&json!(12)).is_ok());
    }

    #[test]
    fn whitespace_classes_follow_ecma_262() {
        let no_space = schema(json!({"pattern": "^\\S+$"}));
        assert!(no_space.validate_value(&json!("abc")).is_ok());
        assert!(no_space.validate_value(&json!("a\u{a0}b")).is_err());
        assert!(no_space.validate_value(&json!("a\u{2003}b")).is_err());
        let in_class = schema(json!({"pattern": "^[\\s,]+$"}));
        assert!(in_class.validate_value(&json!(" ,\u{feff}")).is_ok());
        assert!(in_class.validate_value(&json!(" x")).is_err());
        let negated = schema(json!({"pattern": "^[^\\s]$"}));
        assert!(negated.validate_value(&json!("\u{3000}")).is_err());
        assert!(negated.validate_value(&json!("x")).is_ok());
        let bracket_first = schema(json!({"pattern": "^[]\\s]+$"}));
        assert!(bracket_first.validate_value(&json!("] \u{a0}")).is_ok());
        assert_eq!(
            errors(json!({"pattern": "[\\S]"})),
            vec!["routes[2].body_schema.pattern: is not a supported regular expression (\\S inside a character class is not supported)"]
        );
        // An escaped backslash followed by `s` is a literal backslash and `s`.
        let literal = schema(json!({"pattern": "^\\\\s$"}));
        assert!(literal.validate_value(&json!("\\s")).is_ok());
        assert!(literal.validate_value(&json!(" ")).is_err());
    }

    #[test]
    fn numbers_compare_mathematically() {
        let s = schema(json!({"minimum": 1, "maximum": 2.5}));
        assert!(s.validate_value(&json!(1.0)).is_ok());
        assert!(s.validate_value(&json!(2.5)).is_ok());
        assert!(s.validate_value(&json!(0.999)).is_err());
        assert!(s.validate_value(&json!(3)).is_err());
        let big = schema(json!({"maximum": 18446744073709551615u64}));
        assert!(big.validate_value(&json!(18446744073709551615u64)).is_ok());
        assert!(big.validate_value(&json!(-1)).is_ok());
        let e = schema(json!({"enum": [1, [false], {"a": 1.0}]}));
        assert!(e.validate_value(&json!(1.0)).is_ok());
        assert!(e.validate_value(&json!({"a": 1})).is_ok());
        assert!(e.validate_value(&json!([0])).is_err());
        assert!(e.validate_value(&json!(true)).is_err());
    }

    #[test]
    fn additional_properties_schema_and_type_lists() {
        let s = schema(json!({
            "type": ["object", "null"],
            "properties": {"id": {"type": "integer"}},
            "additionalProperties": {"type": "string"}
        }));
        assert!(s.validate_value(&json!(null)).is_ok());
        assert!(s.validate_value(&json!({"id": 1, "note": "x"})).is_ok());
        assert_eq!(
            fields(s.validate_value(&json!({"id": 1, "note": 2}))),
            vec![("note".into(), "must be a string".into())]
        );
        assert_eq!(
            fields(s.validate_value(&json!(3))),
            vec![(
                String::new(),
                "must be one of the types object, null".into()
            )]
        );
    }

    #[test]
    fn client_chosen_keys_in_paths_are_cut() {
        let s = schema(json!({"additionalProperties": false}));
        let long_key = "k".repeat(10_000);
        let body = json!({ long_key: 1 });
        let found = s.validate_value(&body).unwrap_err();
        assert!(found[0].field.len() <= MAX_FIELD_PATH_BYTES + 3);
    }

    #[test]
    fn email_format() {
        for good in [
            "joe.bloggs@example.com",
            "te~st@example.com",
            "\"joe bloggs\"@example.com",
            "\"joe@bloggs\"@example.com",
            "a@[127.0.0.1]",
            "a@[IPv6:::1]",
            "x@localhost",
        ] {
            assert!(is_email(good), "{good}");
        }
        for bad in [
            "2962",
            ".test@example.com",
            "test.@example.com",
            "te..st@example.com",
            "joe.bloggs@invalid=domain.com",
            "a@[127.0.0.300]",
            "@example.com",
            "a@",
            "a@-example.com",
            "a@example..com",
            "é@example.com",
            "a b@example.com",
            "\"unterminated@example.com",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
    }

    #[test]
    fn deep_schemas_are_refused() {
        let mut deep = json!({"type": "string"});
        for _ in 0..MAX_SCHEMA_DEPTH + 1 {
            deep = json!({ "items": deep });
        }
        let found = errors(deep);
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("nested more than 64"), "{found:?}");
    }

    #[test]
    fn config_errors_name_the_path() {
        assert_eq!(
            errors(json!({"properties": {"email": {"type": "string", "format": "emial"}}})),
            vec!["routes[2].body_schema.properties.email.format: unsupported format \"emial\" (only \"email\" is supported)"]
        );
        let found = errors(json!({
            "type": "strin",
            "minimun": 3,
            "$ref": "#/x",
            "required": ["a", "a", 3],
            "minLength": -1,
            "maxItems": 1.5,
            "enum": [],
            "items": [{}],
            "pattern": "\\p{Letter}",
            "additionalProperties": 3,
            "properties": {"a": {"minItems": 3, "maxItems": 2}}
        }));
        let paths: Vec<&str> = found
            .iter()
            .map(|e| e.split(": ").next().unwrap_or_default())
            .collect();
        assert_eq!(
            paths,
            vec![
                "routes[2].body_schema.$ref",
                "routes[2].body_schema.additionalProperties",
                "routes[2].body_schema.enum",
                "routes[2].body_schema.items",
                "routes[2].body_schema.maxItems",
                "routes[2].body_schema.minLength",
                "routes[2].body_schema.minimun",
                "routes[2].body_schema.pattern",
                "routes[2].body_schema.properties.a",
                "routes[2].body_schema.required[1]",
                "routes[2].body_schema.required[2]",
                "routes[2].body_schema.type",
            ],
            "{found:#?}"
        );
        assert_eq!(
            errors(json!({"minimum": 5, "maximum": 1})),
            vec!["routes[2].body_schema: minimum is greater than maximum: nothing could pass"]
        );
        assert_eq!(
            errors(json!([])),
            vec!["routes[2].body_schema: a schema must be an object or a boolean"]
        );
    }

    #[test]
    fn boolean_schemas() {
        assert!(schema(json!(true)).validate(b"[1]").is_ok());
        assert_eq!(
            fields(schema(json!(false)).validate(b"{}")),
            vec![(String::new(), "is not allowed".into())]
        );
        assert_eq!(
            fields(schema(json!({"items": false})).validate(b"[1]")),
            vec![("[0]".into(), "is not allowed".into())]
        );
    }
}
