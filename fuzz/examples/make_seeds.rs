//! Writes the raw-protobuf seeds of the `response` and `registry` targets into `seeds/`:
//! `cargo run --example make_seeds` from `fuzz/`. A mutator rarely builds a valid message from
//! nothing, so these start it from messages the codecs accept (and a few they refuse). Each
//! file is the mode byte 0 (raw) and then the encoded message. Structured-mode seeds are not
//! made here: they are picked from a fuzzing run's minimised corpus (see docs/fuzzing.md).

use std::path::Path;

use bytes::Bytes;
use prost::Message;
use switchyard_core::event::{Event, EventKind};
use switchyard_core::{InstanceKey, Stamp};
use switchyard_proto::forwarding::{ForwardingResp, Header};
use switchyard_proto::registry as pb;

fn header(name: &str, value: &[u8]) -> Header {
    Header {
        name: name.into(),
        value: Bytes::copy_from_slice(value),
    }
}

fn write(dir: &Path, name: &str, message: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), [&[0u8][..], message].concat())
}

fn responses(dir: &Path) -> std::io::Result<()> {
    let seeds = [
        (
            "raw-200-headers",
            200,
            vec![
                header("content-type", b"text/plain"),
                header("set-cookie", b"a=1"),
                header("set-cookie", b"b=2"),
                header("connection", b"close, x-private"),
                header("x-private", b"p"),
                header("content-length", b"999"),
            ],
            &b"hello"[..],
        ),
        (
            "raw-204-body",
            204,
            vec![header("etag", b"\"1\"")],
            b"dropped",
        ),
        ("raw-502", 502, vec![], b""),
        (
            "raw-connection-non-ascii",
            200,
            vec![
                header("connection", b"x-private,\xff"),
                header("x-private", b"p"),
            ],
            b"",
        ),
        ("raw-status-100", 100, vec![], b""),
        (
            "raw-crlf-value",
            200,
            vec![header("x-inject", b"a\r\nset-cookie: evil=1")],
            b"",
        ),
    ];
    for (name, status, headers, body) in seeds {
        let resp = ForwardingResp {
            status,
            headers,
            body: Bytes::copy_from_slice(body),
        };
        write(dir, name, &resp.encode_to_vec())?;
    }
    Ok(())
}

fn events(dir: &Path) -> std::io::Result<()> {
    let register = Event {
        kind: EventKind::Register,
        key: InstanceKey::new("orders", "i-1"),
        addr: "http://127.0.0.1:7001".into(),
        metadata: [("zone".into(), "a".into())].into(),
        lease_ms: 30_000,
        stamp: Stamp::new(1_000, 2, "gw-1"),
        origin_node: "gw-1".into(),
    };
    let renew = Event {
        kind: EventKind::Renew,
        addr: "http://[::1]:7002".into(),
        metadata: Default::default(),
        stamp: Stamp::new(2_000, 0, "gw-2"),
        ..register.clone()
    };
    let tombstone = |kind| Event {
        kind,
        addr: String::new(),
        metadata: Default::default(),
        lease_ms: 0,
        stamp: Stamp::new(3_000, 1, "gw-3"),
        ..register.clone()
    };
    write(dir, "raw-register", &register.encode())?;
    write(dir, "raw-renew", &renew.encode())?;
    write(
        dir,
        "raw-deregister",
        &tombstone(EventKind::Deregister).encode(),
    )?;
    write(dir, "raw-evict", &tombstone(EventKind::Evict).encode())?;
    // Refused: an address that is not normalised, and an event without a stamp.
    let mut raw = pb::RegistryEvent::decode(register.encode().as_slice())?;
    raw.addr = "127.0.0.1:7001".into();
    write(dir, "raw-addr-not-normalised", &raw.encode_to_vec())?;
    raw.addr = register.addr.clone();
    raw.stamp = None;
    write(dir, "raw-no-stamp", &raw.encode_to_vec())?;
    Ok(())
}

fn main() -> std::io::Result<()> {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    responses(&seeds.join("response"))?;
    events(&seeds.join("registry"))?;
    Ok(())
}
