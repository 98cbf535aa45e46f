//! An answer's message as its DATA frames bring it, within the call's bound.

use bytes::{Bytes, BytesMut};

use super::CallLimits;

/// gRPC's message prefix: the compressed flag and the length.
const GRPC_PREFIX_BYTES: usize = 5;

/// The bytes of an answer as they arrive: the first frame's kept as they came (an answer of
/// one DATA frame is not copied), later ones appended.
#[derive(Debug, Default)]
pub(super) enum Collected {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Collected {
    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            Self::Empty => &[],
            Self::One(bytes) => bytes,
            Self::Many(bytes) => bytes,
        }
    }

    /// Adds `chunk`; false when the message would pass `limits` (counted from the bytes
    /// received, and from the length its prefix declares as soon as that has arrived).
    pub(super) fn push(&mut self, chunk: Bytes, limits: CallLimits) -> bool {
        if chunk.is_empty() {
            return true;
        }
        let bound = limits.message_bytes_max.saturating_add(GRPC_PREFIX_BYTES);
        if self.bytes().len().saturating_add(chunk.len()) > bound {
            return false;
        }
        *self = match std::mem::take(self) {
            Self::Empty => Self::One(chunk),
            Self::One(first) => {
                let mut many = BytesMut::with_capacity(first.len() + chunk.len());
                many.extend_from_slice(&first);
                many.extend_from_slice(&chunk);
                Self::Many(many)
            }
            Self::Many(mut many) => {
                many.extend_from_slice(&chunk);
                Self::Many(many)
            }
        };
        match self.bytes().get(1..GRPC_PREFIX_BYTES) {
            Some(&[a, b, c, d]) => {
                u32::from_be_bytes([a, b, c, d]) as usize <= limits.message_bytes_max
            }
            _ => true,
        }
    }

    pub(super) fn into_bytes(self) -> Bytes {
        match self {
            Self::Empty => Bytes::new(),
            Self::One(bytes) => bytes,
            Self::Many(bytes) => bytes.freeze(),
        }
    }
}
