//! HPACK, the header compression of HTTP/2 (RFC 7541), as a client needs it.
//!
//! * Decoding: [`Decoder`] reads the header blocks of one connection's responses, keeping the
//!   dynamic table in step with the peer's encoder. It passes each field to a callback as two
//!   byte slices borrowed from the block, the tables or a scratch buffer, so that a field
//!   indexed from a table costs no allocation and no copy. It does not check that names and
//!   values are valid HTTP: the caller does.
//! * Encoding: the `encode_*` functions write the three representations the client uses. The
//!   client never adds to the peer's dynamic table and never uses Huffman coding, so it needs
//!   no encoder state and does not have to follow the peer's SETTINGS_HEADER_TABLE_SIZE.
//!
//! Every failure to decode is a connection error (COMPRESSION_ERROR, RFC 7540 §4.3): once a
//! block is rejected the two dynamic tables may differ, and no later block can be trusted.

use std::fmt;

use bytes::{BufMut, BytesMut};

use table::{NameSource, Slot, Table};

mod huffman;
mod table;
#[cfg(test)]
mod tests;

/// `:authority`, name only.
pub const AUTHORITY: usize = 1;
/// `:method: GET`.
pub const METHOD_GET: usize = 2;
/// `:method: POST`.
pub const METHOD_POST: usize = 3;
/// `:path`, name only (the entry's value, `/`, is not a gRPC path).
pub const PATH: usize = 4;
/// `:scheme: http`.
pub const SCHEME_HTTP: usize = 6;
/// `:scheme: https`.
pub const SCHEME_HTTPS: usize = 7;
/// `content-type`, name only.
pub const CONTENT_TYPE: usize = 31;
/// `user-agent`, name only.
pub const USER_AGENT: usize = 58;
/// `via`, name only.
pub const VIA: usize = 60;

/// The static table of RFC 7541 Appendix A. Index 1 is the first entry.
const STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// The largest integer the decoder accepts (16 MiB), as a length, an index or a table size.
/// RFC 7541 §5.1 lets a decoder limit integers; a string longer than this could not be in a
/// block anyway, and no index or table size of a sane peer comes near it.
const INTEGER_MAX: usize = 1 << 24;

/// The most continuation octets an integer may take. Four carry 28 bits, enough for any value
/// up to [`INTEGER_MAX`] whatever the prefix; more can only be padding with zeros, refused so
/// that a peer cannot make the decoder walk a long run of them.
const INTEGER_CONTINUATIONS_MAX: usize = 4;

/// What an entry costs in a table or a list beyond its name and value (RFC 7541 §4.1,
/// RFC 7540 §6.5.2).
const ENTRY_OVERHEAD_BYTES: usize = 32;

/// The scratch capacity kept between blocks. Beyond it the buffer is shrunk after the block,
/// so that one large Huffman-coded block does not pin its memory for the connection's life.
const SCRATCH_KEPT_BYTES_MAX: usize = 16 * 1024;

/// Why a header block could not be decoded. Always a connection error (COMPRESSION_ERROR):
/// the dynamic table may now differ from the peer's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The block ends inside an integer.
    #[error("the header block ends inside an integer")]
    TruncatedInteger,
    /// An integer exceeds the decoder's limit, in value or in octets.
    #[error("an integer in the header block exceeds the limit of {INTEGER_MAX}")]
    IntegerOverflow,
    /// A string's length runs past the end of the block.
    #[error(
        "a string of {length_bytes} bytes runs past the end of the header block ({left_bytes} left)"
    )]
    TruncatedString {
        /// The length the string announces.
        length_bytes: usize,
        /// What is left of the block after the length.
        left_bytes: usize,
    },
    /// An indexed field or name refers to index 0, which is no entry.
    #[error("index 0 refers to no header field")]
    IndexZero,
    /// An index lies past the static and dynamic tables.
    #[error("index {index} is past the static and dynamic tables ({entries} entries)")]
    IndexOutOfRange {
        /// The index the block refers to.
        index: usize,
        /// The entries of both tables together.
        entries: usize,
    },
    /// A Huffman string contains the EOS symbol.
    #[error("a Huffman-coded string contains the EOS symbol")]
    HuffmanEos,
    /// A Huffman string ends with more than 7 bits of padding.
    #[error("a Huffman-coded string ends with more than 7 bits of padding")]
    HuffmanPaddingTooLong,
    /// A Huffman string's padding is not a prefix of EOS (all ones).
    #[error("a Huffman-coded string's padding is not all ones")]
    HuffmanPaddingNotOnes,
    /// A dynamic table size update asks for more than our SETTINGS_HEADER_TABLE_SIZE.
    #[error("a table size update to {size_bytes} bytes exceeds our limit of {limit_bytes}")]
    TableSizeAboveLimit {
        /// The size the update asks for.
        size_bytes: usize,
        /// Our SETTINGS_HEADER_TABLE_SIZE.
        limit_bytes: usize,
    },
    /// A dynamic table size update follows a field of the block.
    #[error("a table size update follows a header field (it may only start a block)")]
    TableSizeUpdateLate,
}

/// What a successfully decoded block amounted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// The header list passed the caller's bound: the fields from the one that passed it on
    /// were not given to the callback (the dynamic table was updated all the same).
    pub oversize: bool,
}

/// The decoding side of one connection's HPACK context: the dynamic table that mirrors the
/// peer's, and a scratch buffer for Huffman-coded strings.
#[derive(Clone)]
pub struct Decoder {
    table: Table,
    /// Our SETTINGS_HEADER_TABLE_SIZE: the most a table size update may ask for.
    table_bytes_limit: usize,
    /// Holds the decoded Huffman strings of the current field. Reused, so that it stops
    /// allocating once it has grown to the connection's usual strings.
    scratch: Vec<u8>,
}

/// Shows sizes only: the table holds header values, which may be credentials.
impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("table_entries", &self.table.slots.len())
            .field("table_bytes", &self.table.size_bytes)
            .field("table_bytes_max", &self.table.size_bytes_max)
            .field("table_bytes_limit", &self.table_bytes_limit)
            .finish_non_exhaustive()
    }
}

impl Decoder {
    /// A decoder with an empty dynamic table.
    ///
    /// `table_bytes_max` is our SETTINGS_HEADER_TABLE_SIZE: the most the peer may make its
    /// table (the protocol's default is 4096). The table starts at that size, since the peer
    /// reads our SETTINGS before it answers any request. Values above 16 MiB are taken as
    /// 16 MiB, the most a table size update can express here. The decoder holds at most about
    /// twice this many bytes for the table.
    pub fn new(table_bytes_max: usize) -> Self {
        let table_bytes_limit = table_bytes_max.min(INTEGER_MAX);
        Self {
            table: Table::new(table_bytes_limit),
            table_bytes_limit,
            scratch: Vec::new(),
        }
    }

    /// Decodes one whole header block (HEADERS plus any CONTINUATION payloads, already
    /// joined), calling `field(name, value)` for each field in order.
    ///
    /// The whole block is always processed, so that the dynamic table stays in step with the
    /// peer's even when the list is too large: once the list's size (RFC 7540 §6.5.2: name +
    /// value + 32 per field) passes `list_bytes_max`, `field` is no longer called and the
    /// result says so. On an error, some fields may already have been passed to `field`.
    pub fn decode(
        &mut self,
        block: &[u8],
        list_bytes_max: usize,
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<Block, DecodeError> {
        let mut list = ListBound {
            list_bytes: 0,
            list_bytes_max,
            oversize: false,
        };
        let mut rest = block;
        let mut field_seen = false;
        // Each pass consumes at least one octet of the block, so the loop is bounded by it.
        while let Some(&first) = rest.first() {
            if first & 0x80 != 0 {
                // Indexed Header Field (§6.1).
                let (index, tail) = decode_integer(rest, 7)?;
                rest = tail;
                let (name, value) = self.entry(index)?;
                list.offer(name, value, &mut field);
            } else if first & 0xe0 == 0x20 {
                // Dynamic Table Size Update (§6.3).
                if field_seen {
                    return Err(DecodeError::TableSizeUpdateLate);
                }
                let (size_bytes, tail) = decode_integer(rest, 5)?;
                rest = tail;
                if size_bytes > self.table_bytes_limit {
                    return Err(DecodeError::TableSizeAboveLimit {
                        size_bytes,
                        limit_bytes: self.table_bytes_limit,
                    });
                }
                self.table.resize(size_bytes);
                continue;
            } else {
                // Literal Header Field with Incremental Indexing (§6.2.1, 6-bit prefix), or
                // without Indexing or Never Indexed (§6.2.2, §6.2.3, 4-bit prefix).
                let indexing = first & 0xc0 == 0x40;
                let prefix_bits = if indexing { 6 } else { 4 };
                rest = self.literal(rest, prefix_bits, indexing, &mut list, &mut field)?;
            }
            field_seen = true;
        }
        if self.scratch.capacity() > SCRATCH_KEPT_BYTES_MAX {
            self.scratch.clear();
            self.scratch.shrink_to(SCRATCH_KEPT_BYTES_MAX);
        }
        Ok(Block {
            oversize: list.oversize,
        })
    }

    /// The entry at `index` of the static table followed by the dynamic one (§2.3.3).
    #[inline]
    fn entry(&self, index: usize) -> Result<(&[u8], &[u8]), DecodeError> {
        if index == 0 {
            return Err(DecodeError::IndexZero);
        }
        if let Some(&(name, value)) = STATIC_TABLE.get(index - 1) {
            return Ok((name, value));
        }
        self.table
            .get(index - 1 - STATIC_TABLE.len())
            .ok_or_else(|| self.out_of_range(index))
    }

    fn out_of_range(&self, index: usize) -> DecodeError {
        DecodeError::IndexOutOfRange {
            index,
            entries: STATIC_TABLE.len() + self.table.slots.len(),
        }
    }

    /// Decodes one literal field from the start of `rest` and returns what follows it.
    fn literal<'b>(
        &mut self,
        rest: &'b [u8],
        prefix_bits: u32,
        indexing: bool,
        list: &mut ListBound,
        field: &mut impl FnMut(&[u8], &[u8]),
    ) -> Result<&'b [u8], DecodeError> {
        self.scratch.clear();
        let (name_index, rest) = decode_integer(rest, prefix_bits)?;
        let (name, rest) = if name_index == 0 {
            let (text, rest) = decode_string(rest, &mut self.scratch)?;
            (Name::Literal(text), rest)
        } else if let Some(&(bytes, _)) = STATIC_TABLE.get(name_index - 1) {
            (Name::Static(bytes), rest)
        } else {
            let position = name_index - 1 - STATIC_TABLE.len();
            match self.table.slots.get(position) {
                Some(&slot) => (Name::Dynamic(slot), rest),
                None => return Err(self.out_of_range(name_index)),
            }
        };
        let (value, rest) = decode_string(rest, &mut self.scratch)?;

        let value = value.bytes(&self.scratch);
        let name = match name {
            Name::Static(bytes) => NameSource::Bytes(bytes),
            Name::Literal(text) => NameSource::Bytes(text.bytes(&self.scratch)),
            Name::Dynamic(slot) => NameSource::Dynamic(slot),
        };
        let name_bytes = match name {
            NameSource::Bytes(bytes) => bytes,
            NameSource::Dynamic(slot) => self.table.name(slot),
        };
        list.offer(name_bytes, value, field);
        if indexing {
            self.table.insert(name, value);
        }
        Ok(rest)
    }
}

/// Where a literal field's name comes from, before its value is decoded.
enum Name<'b> {
    Static(&'static [u8]),
    Dynamic(Slot),
    Literal(Text<'b>),
}

/// A decoded string: raw octets of the block, or a range of the scratch buffer where its
/// Huffman decoding was written.
#[derive(Clone, Copy)]
enum Text<'b> {
    Raw(&'b [u8]),
    Scratch { start: usize, end: usize },
}

impl<'b> Text<'b> {
    fn bytes<'a>(self, scratch: &'a [u8]) -> &'a [u8]
    where
        'b: 'a,
    {
        match self {
            Text::Raw(bytes) => bytes,
            Text::Scratch { start, end } => scratch.get(start..end).unwrap_or_default(),
        }
    }
}

/// The running size of the header list against the caller's bound.
struct ListBound {
    list_bytes: usize,
    list_bytes_max: usize,
    oversize: bool,
}

impl ListBound {
    /// Counts a field and passes it on, unless the list has passed its bound.
    #[inline]
    fn offer(&mut self, name: &[u8], value: &[u8], field: &mut impl FnMut(&[u8], &[u8])) {
        let field_bytes = name.len() + value.len() + ENTRY_OVERHEAD_BYTES;
        self.list_bytes = self.list_bytes.saturating_add(field_bytes);
        if self.list_bytes > self.list_bytes_max {
            self.oversize = true;
        }
        if !self.oversize {
            field(name, value);
        }
    }
}

/// Decodes an integer with a `prefix_bits`-bit prefix (§5.1) from the start of `src`, and
/// returns it with what follows.
#[inline]
fn decode_integer(src: &[u8], prefix_bits: u32) -> Result<(usize, &[u8]), DecodeError> {
    let (&first, mut rest) = src.split_first().ok_or(DecodeError::TruncatedInteger)?;
    let mask = 0xff_u8 >> (8 - prefix_bits);
    let mut value = usize::from(first & mask);
    if value < usize::from(mask) {
        return Ok((value, rest));
    }
    for continuation in 0..INTEGER_CONTINUATIONS_MAX {
        let (&octet, tail) = rest.split_first().ok_or(DecodeError::TruncatedInteger)?;
        rest = tail;
        // At most 255 + 2^28 - 1: no overflow, even with a 32-bit usize.
        value += usize::from(octet & 0x7f) << (7 * continuation);
        if octet & 0x80 == 0 {
            if value > INTEGER_MAX {
                return Err(DecodeError::IntegerOverflow);
            }
            return Ok((value, rest));
        }
    }
    Err(DecodeError::IntegerOverflow)
}

/// Decodes a string literal (§5.2) from the start of `src`, and returns it with what follows.
/// A Huffman-coded string is decoded at the end of `scratch`.
fn decode_string<'b>(
    src: &'b [u8],
    scratch: &mut Vec<u8>,
) -> Result<(Text<'b>, &'b [u8]), DecodeError> {
    let huffman = src.first().is_some_and(|&octet| octet & 0x80 != 0);
    let (length_bytes, rest) = decode_integer(src, 7)?;
    if length_bytes > rest.len() {
        return Err(DecodeError::TruncatedString {
            length_bytes,
            left_bytes: rest.len(),
        });
    }
    let (coded, rest) = rest.split_at(length_bytes);
    if !huffman {
        return Ok((Text::Raw(coded), rest));
    }
    let start = scratch.len();
    huffman::decode(coded, scratch)?;
    let end = scratch.len();
    Ok((Text::Scratch { start, end }, rest))
}

/// Writes an integer with a `prefix_bits`-bit prefix (§5.1); `flags` fills the first octet's
/// other bits.
fn encode_integer(value: usize, prefix_bits: u32, flags: u8, dst: &mut BytesMut) {
    let mask = 0xff_u8 >> (8 - prefix_bits);
    if value < usize::from(mask) {
        // Fits in the prefix: `value` is below `mask`, so the cast keeps it whole.
        dst.put_u8(flags | value as u8);
        return;
    }
    dst.put_u8(flags | mask);
    let mut rest = value - usize::from(mask);
    // Seven bits per octet: at most ten octets for a 64-bit value.
    while rest >= 0x80 {
        dst.put_u8(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    dst.put_u8(rest as u8);
}

/// Writes a string literal without Huffman coding (§5.2).
fn encode_string(text: &[u8], dst: &mut BytesMut) {
    encode_integer(text.len(), 7, 0x00, dst);
    dst.extend_from_slice(text);
}

/// Writes an Indexed Header Field (§6.1) for the entry `static_index` of the static table
/// (one of this module's constants that name a name and a value, such as [`METHOD_POST`]).
///
/// `static_index` must lie in 1..=61; the constants do.
pub fn encode_indexed(static_index: usize, dst: &mut BytesMut) {
    debug_assert!((1..=STATIC_TABLE.len()).contains(&static_index));
    encode_integer(static_index, 7, 0x80, dst);
}

/// Writes a Literal Header Field without Indexing (§6.2.2) whose name is the name of the
/// static table's entry `static_name_index` (such as [`PATH`]), and whose value is `value`,
/// without Huffman coding.
///
/// `static_name_index` must lie in 1..=61; the constants do.
pub fn encode_literal_with_name_index(static_name_index: usize, value: &[u8], dst: &mut BytesMut) {
    debug_assert!((1..=STATIC_TABLE.len()).contains(&static_name_index));
    dst.reserve(2 * 6 + value.len());
    encode_integer(static_name_index, 4, 0x00, dst);
    encode_string(value, dst);
}

/// Writes a Literal Header Field without Indexing (§6.2.2) with a new name, without Huffman
/// coding. HTTP/2 requires the name in lower case (RFC 7540 §8.1.2); the caller provides it so.
pub fn encode_literal_new_name(name: &[u8], value: &[u8], dst: &mut BytesMut) {
    dst.reserve(1 + 2 * 6 + name.len() + value.len());
    dst.put_u8(0x00);
    encode_string(name, dst);
    encode_string(value, dst);
}
