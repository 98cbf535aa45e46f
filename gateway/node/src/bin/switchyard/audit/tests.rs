use std::collections::BTreeMap;

use switchyard_proto::audit::{
    AuditRecord, Captured, Front, Principal, RegistryAction, RegistryAudit, RequestAudit,
    audit_record::Kind,
};

use super::filter::SINCE_S_MAX;
use super::format::{self, Position, utc};
use super::*;

fn request(service: &str, status: u32) -> AuditRecord {
    AuditRecord {
        version: 1,
        time_unix_ms: 1_764_536_430_123,
        gateway_node: "gw-1".into(),
        kind: Some(Kind::Request(RequestAudit {
            request_id: "req-1".into(),
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            front: Front::Rest as i32,
            client_addr: "127.0.0.1:5000".into(),
            principal: Some(Principal {
                subject: "alice".into(),
                credential_id: "jti-1".into(),
            }),
            method: "GET".into(),
            service: service.into(),
            path: "/hello".into(),
            query: "x=1".into(),
            status,
            error_code: String::new(),
            latency_us: 1_500,
            instance_id: "s-1".into(),
            bytes_in: 0,
            bytes_out: 12,
            sample_rate: 1.0,
            request_capture: None,
            response_capture: None,
        })),
    }
}

fn registration(service: &str) -> AuditRecord {
    AuditRecord {
        version: 1,
        time_unix_ms: 0,
        gateway_node: "gw-2".into(),
        kind: Some(Kind::Registry(RegistryAudit {
            action: RegistryAction::Register as i32,
            service: service.into(),
            instance_id: "i-1".into(),
            addr: "10.0.0.1:7000".into(),
            via: "rest".into(),
            client_addr: "10.0.0.1:4000".into(),
            principal: None,
            error_code: "forbidden".into(),
            stamp: String::new(),
            lease_ms: 0,
        })),
    }
}

const AT: Position<'static> = Position {
    topic: "switchyard.audit.requests",
    partition: 2,
    offset: 41,
};

#[test]
fn status_filters_parse_classes_and_codes_and_nothing_else() {
    assert_eq!(parse_status("5xx"), Ok(StatusFilter::Class(5)));
    assert_eq!(parse_status("4XX"), Ok(StatusFilter::Class(4)));
    assert_eq!(parse_status("404"), Ok(StatusFilter::Code(404)));
    for bad in [
        "", "6xx", "0xx", "099", "600", "5x", "50x", "5xxx", "40", "４04", "-404",
    ] {
        assert!(parse_status(bad).is_err(), "{bad:?} was taken");
    }
    assert!(StatusFilter::Class(5).matches(503));
    assert!(!StatusFilter::Class(5).matches(499));
    assert!(StatusFilter::Code(404).matches(404));
    assert!(!StatusFilter::Code(404).matches(405));
}

#[test]
fn since_parses_units_within_its_bound() {
    assert_eq!(parse_since("30s"), Ok(30));
    assert_eq!(parse_since("10m"), Ok(600));
    assert_eq!(parse_since("2h"), Ok(7200));
    assert_eq!(parse_since("1d"), Ok(86_400));
    assert_eq!(parse_since("365d"), Ok(SINCE_S_MAX));
    for bad in [
        "",
        "m",
        "10",
        "0s",
        "10 m",
        "1w",
        "-1h",
        "366d",
        "99999999999999999999s",
        "1é",
    ] {
        assert!(parse_since(bad).is_err(), "{bad:?} was taken");
    }
}

#[test]
fn the_filter_matches_service_and_status_and_keeps_registry_records_out_of_status() {
    let all = Filter::default();
    let sample_5xx = Filter {
        service: Some("sample".into()),
        status: Some(StatusFilter::Class(5)),
    };
    assert!(all.admits(&request("other", 200)));
    assert!(all.admits(&registration("other")));
    assert!(sample_5xx.admits(&request("sample", 502)));
    assert!(!sample_5xx.admits(&request("sample", 200)));
    assert!(!sample_5xx.admits(&request("other", 502)));
    assert!(!sample_5xx.admits(&registration("sample")));
    let sample = Filter {
        service: Some("sample".into()),
        status: None,
    };
    assert!(sample.admits(&registration("sample")));
}

#[test]
fn utc_times_are_calendar_dates() {
    assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
    assert_eq!(utc(1_764_536_430_123), "2025-11-30T21:00:30.123Z");
    assert_eq!(utc(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
    assert_eq!(utc(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
}

#[test]
fn a_readable_line_names_the_request_and_escapes_control_characters() {
    let mut record = request("sample", 502);
    if let Some(Kind::Request(r)) = &mut record.kind {
        r.path = "/a\x1b[31mred\n".into();
        r.error_code = "upstream_unavailable".into();
    }
    let line = format::line(&record);
    assert_eq!(
        line,
        "2025-11-30T21:00:30.123Z gw-1 rest req-1 GET sample /a\\u{1b}[31mred\\n?x=1 502 1.5ms \
         error=upstream_unavailable instance=s-1 in=0B out=12B client=127.0.0.1:5000 \
         subject=alice credential=jti-1"
    );
    assert!(!line.contains('\x1b') && !line.contains('\n'));
    assert_eq!(
        format::line(&registration("sample")),
        "1970-01-01T00:00:00.000Z gw-2 register sample/i-1 refused=forbidden addr=10.0.0.1:7000 \
         via=rest client=10.0.0.1:4000"
    );
}

#[test]
fn json_has_every_field_and_where_it_was_read() {
    let mut record = request("sample", 200);
    if let Some(Kind::Request(r)) = &mut record.kind {
        r.request_capture = Some(Captured {
            headers: BTreeMap::from([("authorization".into(), "REDACTED".into())]),
            body: br#"{"password":"REDACTED"}"#.to_vec(),
            body_size: 23,
            truncated: false,
            omitted: String::new(),
        });
        r.response_capture = Some(Captured {
            body: vec![0xff, 0x00],
            ..Captured::default()
        });
    }
    let value = format::json(&record, AT);
    assert_eq!(value["topic"], "switchyard.audit.requests");
    assert_eq!(value["partition"], 2);
    assert_eq!(value["offset"], 41);
    assert_eq!(value["version"], 1);
    assert_eq!(value["kind"], "request");
    let r = &value["request"];
    assert_eq!(r["request_id"], "req-1");
    assert_eq!(r["front"], "rest");
    assert_eq!(r["status"], 200);
    assert_eq!(r["latency_us"], 1500);
    assert_eq!(r["principal"]["subject"], "alice");
    assert_eq!(r["request_capture"]["headers"]["authorization"], "REDACTED");
    assert_eq!(r["request_capture"]["body"], r#"{"password":"REDACTED"}"#);
    assert_eq!(r["request_capture"]["body_encoding"], "utf8");
    assert_eq!(r["response_capture"]["body"], "ff00");
    assert_eq!(r["response_capture"]["body_encoding"], "hex");
    let fields = r.as_object().expect("an object").len();
    assert_eq!(fields, 18, "one key per RequestAudit field: {r}");
    let registry = format::json(&registration("s"), AT);
    assert_eq!(registry["kind"], "registry");
    assert_eq!(registry["registry"]["action"], "register");
    assert_eq!(registry["registry"]["error_code"], "forbidden");
    assert_eq!(registry["registry"].as_object().map(|o| o.len()), Some(10));
}

#[cfg(feature = "kafka")]
#[test]
fn records_that_do_not_decode_or_have_another_version_are_skipped_with_a_reason() {
    use prost::Message as _;

    use super::read::{Rendered, render};

    let filter = Filter::default();
    let good = request("sample", 200).encode_to_vec();
    assert!(matches!(
        render(Some(&good), AT, &filter, true),
        Rendered::Print(line) if line.starts_with('{') && !line.contains('\n')
    ));
    let mut future = request("sample", 200);
    future.version = 2;
    let Rendered::Skipped(why) = render(Some(&future.encode_to_vec()), AT, &filter, false) else {
        panic!("a version-2 record was shown");
    };
    assert!(
        why.contains("version 2") && why.contains("offset 41"),
        "{why}"
    );
    let Rendered::Skipped(why) = render(Some(b"\xff\xff\xff"), AT, &filter, false) else {
        panic!("garbage was shown");
    };
    assert!(why.contains("not an audit record"), "{why}");
    assert!(matches!(
        render(None, AT, &filter, false),
        Rendered::Skipped(_)
    ));
    let only_other = Filter {
        service: Some("other".into()),
        status: None,
    };
    assert_eq!(
        render(Some(&good), AT, &only_other, false),
        Rendered::Filtered
    );
}
