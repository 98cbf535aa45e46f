//! HTTP/2 frames (RFC 9113 §4 and §6): the nine-byte head, the frame types and flags the
//! client reads and writes, the error codes, and the writers of the frames it sends.

use bytes::{BufMut, BytesMut};

/// What a client sends first (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The bytes of a frame's head.
pub const HEAD_BYTES: usize = 9;

/// The default and smallest `SETTINGS_MAX_FRAME_SIZE`, and the largest allowed.
pub const FRAME_BYTES_DEFAULT: u32 = 16_384;
pub const FRAME_BYTES_LIMIT: u32 = (1 << 24) - 1;

/// The initial flow-control window of a connection and of each stream (RFC 9113 §6.9.2).
pub const WINDOW_DEFAULT: u32 = 65_535;
/// The largest a flow-control window may grow to.
pub const WINDOW_MAX: i64 = (1 << 31) - 1;

/// The largest stream identifier.
pub const STREAM_ID_MAX: u32 = (1 << 31) - 1;

/// Frame types (RFC 9113 §6).
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags (RFC 9113 §6).
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// Settings identifiers (RFC 9113 §6.5.2).
pub mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    pub const ENABLE_PUSH: u16 = 0x2;
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// An HTTP/2 error code (RFC 9113 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reason(pub u32);

impl Reason {
    pub const NO_ERROR: Self = Self(0x0);
    pub const PROTOCOL_ERROR: Self = Self(0x1);
    pub const INTERNAL_ERROR: Self = Self(0x2);
    pub const FLOW_CONTROL_ERROR: Self = Self(0x3);
    pub const STREAM_CLOSED: Self = Self(0x5);
    pub const FRAME_SIZE_ERROR: Self = Self(0x6);
    pub const REFUSED_STREAM: Self = Self(0x7);
    pub const CANCEL: Self = Self(0x8);
    pub const COMPRESSION_ERROR: Self = Self(0x9);
    pub const ENHANCE_YOUR_CALM: Self = Self(0xb);

    /// The code's name, or its number when it is not one RFC 9113 defines.
    pub fn name(self) -> &'static str {
        const NAMES: [&str; 14] = [
            "NO_ERROR",
            "PROTOCOL_ERROR",
            "INTERNAL_ERROR",
            "FLOW_CONTROL_ERROR",
            "SETTINGS_TIMEOUT",
            "STREAM_CLOSED",
            "FRAME_SIZE_ERROR",
            "REFUSED_STREAM",
            "CANCEL",
            "COMPRESSION_ERROR",
            "CONNECT_ERROR",
            "ENHANCE_YOUR_CALM",
            "INADEQUATE_SECURITY",
            "HTTP_1_1_REQUIRED",
        ];
        usize::try_from(self.0)
            .ok()
            .and_then(|i| NAMES.get(i))
            .copied()
            .unwrap_or("an unknown error code")
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:#x})", self.name(), self.0)
    }
}

/// A frame's head as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl Head {
    /// Reads the head `bytes` starts with; `None` when fewer than nine bytes are there.
    pub fn read(bytes: &[u8]) -> Option<Self> {
        let h: &[u8; HEAD_BYTES] = bytes.get(..HEAD_BYTES)?.try_into().ok()?;
        Some(Self {
            len: u32::from_be_bytes([0, h[0], h[1], h[2]]),
            kind: h[3],
            flags: h[4],
            // The reserved bit is ignored on receipt (RFC 9113 §4.1).
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & STREAM_ID_MAX,
        })
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Writes a frame's head. `len` must be below 2^24 (every caller's is at most the peer's
/// maximum frame size).
pub fn write_head(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    debug_assert!(len <= FRAME_BYTES_LIMIT as usize);
    let len = (len as u32).to_be_bytes();
    let id = (stream & STREAM_ID_MAX).to_be_bytes();
    out.put_slice(&[
        len[1], len[2], len[3], kind, flags, id[0], id[1], id[2], id[3],
    ]);
}

/// SETTINGS with the given pairs.
pub fn write_settings(out: &mut BytesMut, pairs: &[(u16, u32)]) {
    write_head(out, pairs.len() * 6, kind::SETTINGS, 0, 0);
    for (id, value) in pairs {
        out.put_u16(*id);
        out.put_u32(*value);
    }
}

pub fn write_settings_ack(out: &mut BytesMut) {
    write_head(out, 0, kind::SETTINGS, flag::ACK, 0);
}

pub fn write_window_update(out: &mut BytesMut, stream: u32, increment: u32) {
    write_head(out, 4, kind::WINDOW_UPDATE, 0, stream);
    out.put_u32(increment & STREAM_ID_MAX);
}

pub fn write_rst_stream(out: &mut BytesMut, stream: u32, reason: Reason) {
    write_head(out, 4, kind::RST_STREAM, 0, stream);
    out.put_u32(reason.0);
}

pub fn write_ping(out: &mut BytesMut, payload: [u8; 8], ack: bool) {
    write_head(out, 8, kind::PING, if ack { flag::ACK } else { 0 }, 0);
    out.put_slice(&payload);
}

pub fn write_goaway(out: &mut BytesMut, last_stream: u32, reason: Reason) {
    write_head(out, 8, kind::GOAWAY, 0, 0);
    out.put_u32(last_stream & STREAM_ID_MAX);
    out.put_u32(reason.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_reads_back_as_written() {
        let mut out = BytesMut::new();
        write_head(
            &mut out,
            70_000,
            kind::HEADERS,
            flag::END_HEADERS,
            0x7fff_fff1,
        );
        assert_eq!(
            Head::read(&out),
            Some(Head {
                len: 70_000,
                kind: kind::HEADERS,
                flags: flag::END_HEADERS,
                stream: 0x7fff_fff1,
            })
        );
        assert_eq!(Head::read(&out[..8]), None);
    }

    #[test]
    fn the_reserved_bit_is_ignored_on_receipt() {
        let bytes = [0, 0, 0, kind::PING, 0, 0x80, 0, 0, 3];
        assert_eq!(Head::read(&bytes).map(|h| h.stream), Some(3));
    }

    #[test]
    fn error_codes_are_named() {
        assert_eq!(Reason::REFUSED_STREAM.to_string(), "REFUSED_STREAM (0x7)");
        assert_eq!(Reason(0x99).name(), "an unknown error code");
    }
}
