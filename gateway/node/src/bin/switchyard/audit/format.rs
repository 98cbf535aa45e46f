//! How `switchyard audit tail` prints a record: one readable line for people, or one JSON
//! object with every field for programs.
//!
//! A record's strings come from clients (paths, headers, bodies): in a readable line, control
//! characters are escaped so that a record cannot move the cursor or recolour a terminal;
//! JSON escapes them by itself.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};
use switchyard_proto::audit::{
    AuditRecord, Captured, Front, Principal, RegistryAction, RegistryAudit, RequestAudit,
    audit_record::Kind,
};

/// Where a record was read: shown in JSON, so a program can come back to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// `2026-11-30T21:10:30.123Z` for Unix ms (UTC, proleptic Gregorian calendar).
pub fn utc(unix_ms: u64) -> String {
    let days = unix_ms / 86_400_000;
    let ms_of_day = unix_ms % 86_400_000;
    let (year, month, day) = civil_from_days(days);
    let (h, m, s, ms) = (
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000,
    );
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
}

/// The calendar date `days` after 1970-01-01: eras of 400 years (146 097 days) starting on
/// 1 March, so that the leap day is the last day of a year.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

/// A client's string, safe to print on a terminal: control characters escaped.
fn safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn front(front: i32) -> &'static str {
    match Front::try_from(front) {
        Ok(Front::Rest) => "rest",
        Ok(Front::GraphqlCall) => "graphql_call",
        _ => "unspecified",
    }
}

fn action(action: i32) -> &'static str {
    match RegistryAction::try_from(action) {
        Ok(RegistryAction::Register) => "register",
        Ok(RegistryAction::Renew) => "renew",
        Ok(RegistryAction::Deregister) => "deregister",
        Ok(RegistryAction::Evict) => "evict",
        _ => "unspecified",
    }
}

/// One readable line (no line break).
pub fn line(record: &AuditRecord) -> String {
    let mut out = format!(
        "{} {}",
        utc(record.time_unix_ms),
        safe(&record.gateway_node)
    );
    match &record.kind {
        Some(Kind::Request(r)) => request_line(&mut out, r),
        Some(Kind::Registry(r)) => registry_line(&mut out, r),
        None => out.push_str(" (a record of no known kind)"),
    }
    out
}

fn request_line(out: &mut String, r: &RequestAudit) {
    let query = if r.query.is_empty() {
        String::new()
    } else {
        format!("?{}", safe(&r.query))
    };
    let _ = write!(
        out,
        " {} {} {} {} {}{} {} {:.1}ms",
        front(r.front),
        safe(&r.request_id),
        safe(&r.method),
        safe(&r.service),
        safe(&r.path),
        query,
        r.status,
        r.latency_us as f64 / 1000.0,
    );
    if !r.error_code.is_empty() {
        let _ = write!(out, " error={}", safe(&r.error_code));
    }
    if !r.instance_id.is_empty() {
        let _ = write!(out, " instance={}", safe(&r.instance_id));
    }
    let _ = write!(
        out,
        " in={}B out={}B client={}",
        r.bytes_in,
        r.bytes_out,
        safe(&r.client_addr)
    );
    principal_words(out, r.principal.as_ref());
    if r.sample_rate < 1.0 {
        let _ = write!(out, " sampled={}", r.sample_rate);
    }
}

fn registry_line(out: &mut String, r: &RegistryAudit) {
    let _ = write!(
        out,
        " {} {}/{}",
        action(r.action),
        safe(&r.service),
        safe(&r.instance_id)
    );
    if r.error_code.is_empty() {
        out.push_str(" applied");
    } else {
        let _ = write!(out, " refused={}", safe(&r.error_code));
    }
    if !r.addr.is_empty() {
        let _ = write!(out, " addr={}", safe(&r.addr));
    }
    if r.lease_ms > 0 {
        let _ = write!(out, " lease={}ms", r.lease_ms);
    }
    let _ = write!(out, " via={}", safe(&r.via));
    if !r.client_addr.is_empty() {
        let _ = write!(out, " client={}", safe(&r.client_addr));
    }
    principal_words(out, r.principal.as_ref());
    if !r.stamp.is_empty() {
        let _ = write!(out, " stamp={}", safe(&r.stamp));
    }
}

fn principal_words(out: &mut String, principal: Option<&Principal>) {
    if let Some(p) = principal.filter(|p| !p.subject.is_empty()) {
        let _ = write!(out, " subject={}", safe(&p.subject));
        if !p.credential_id.is_empty() {
            let _ = write!(out, " credential={}", safe(&p.credential_id));
        }
    }
}

/// One JSON object with every field of the record, and where it was read.
pub fn json(record: &AuditRecord, at: Position<'_>) -> Value {
    let mut object = Map::new();
    object.insert("topic".into(), at.topic.into());
    object.insert("partition".into(), at.partition.into());
    object.insert("offset".into(), at.offset.into());
    object.insert("version".into(), record.version.into());
    object.insert("time_unix_ms".into(), record.time_unix_ms.into());
    object.insert("time".into(), utc(record.time_unix_ms).into());
    object.insert("gateway_node".into(), record.gateway_node.clone().into());
    match &record.kind {
        Some(Kind::Request(r)) => {
            object.insert("kind".into(), "request".into());
            object.insert("request".into(), request_json(r));
        }
        Some(Kind::Registry(r)) => {
            object.insert("kind".into(), "registry".into());
            object.insert("registry".into(), registry_json(r));
        }
        None => {
            object.insert("kind".into(), Value::Null);
        }
    }
    Value::Object(object)
}

fn principal_json(principal: Option<&Principal>) -> Value {
    let p = principal.cloned().unwrap_or_default();
    json!({ "subject": p.subject, "credential_id": p.credential_id })
}

fn request_json(r: &RequestAudit) -> Value {
    json!({
        "request_id": r.request_id,
        "trace_id": r.trace_id,
        "front": front(r.front),
        "client_addr": r.client_addr,
        "principal": principal_json(r.principal.as_ref()),
        "method": r.method,
        "service": r.service,
        "path": r.path,
        "query": r.query,
        "status": r.status,
        "error_code": r.error_code,
        "latency_us": r.latency_us,
        "instance_id": r.instance_id,
        "bytes_in": r.bytes_in,
        "bytes_out": r.bytes_out,
        "sample_rate": r.sample_rate,
        "request_capture": r.request_capture.as_ref().map(captured_json),
        "response_capture": r.response_capture.as_ref().map(captured_json),
    })
}

/// A captured body as text when it is UTF-8 (JSON, most often), else in hex; `body_encoding`
/// says which.
fn captured_json(c: &Captured) -> Value {
    let (body, encoding) = match std::str::from_utf8(&c.body) {
        Ok(text) => (text.to_owned(), "utf8"),
        Err(_) => (hex(&c.body), "hex"),
    };
    json!({
        "headers": c.headers,
        "body": body,
        "body_encoding": encoding,
        "body_size": c.body_size,
        "truncated": c.truncated,
        "omitted": c.omitted,
    })
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn registry_json(r: &RegistryAudit) -> Value {
    json!({
        "action": action(r.action),
        "service": r.service,
        "instance_id": r.instance_id,
        "addr": r.addr,
        "via": r.via,
        "client_addr": r.client_addr,
        "principal": principal_json(r.principal.as_ref()),
        "error_code": r.error_code,
        "stamp": r.stamp,
        "lease_ms": r.lease_ms,
    })
}
