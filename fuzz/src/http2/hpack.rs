//! HPACK (RFC 7541) as the harness reads it: a decoder written from the RFC, apart from the
//! client's, that says whether a header block decodes, to which fields, and what it does to
//! the dynamic table; and a Huffman encoder for the structured vocabulary.
//!
//! Where RFC 7541 leaves a decoder a choice, this one makes the choice the client documents
//! (`switchyard_core::http2::hpack`): integers above 2^24, or taking more than four
//! continuation octets, are refused (§5.1 lets a decoder limit integers), and a table size
//! update after the block's first field is refused (§4.2: the update MUST come first).

use std::collections::VecDeque;
use std::sync::OnceLock;

/// The largest integer the client's decoder accepts, as its doc comment on `INTEGER_MAX`
/// says; and the continuation octets it reads at most (`INTEGER_CONTINUATIONS_MAX`).
const INTEGER_MAX: usize = 1 << 24;
const CONTINUATIONS_MAX: usize = 4;

/// What an entry costs beyond its name and value (§4.1), in a table and in a header list.
pub(super) const ENTRY_OVERHEAD_BYTES: usize = 32;

pub(super) type Field = (Vec<u8>, Vec<u8>);

/// RFC 7541 Appendix A. Index 1 is the first entry.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// The static index of `name`, if the static table has it.
pub(super) fn static_name(name: &[u8]) -> Option<usize> {
    STATIC
        .iter()
        .position(|(n, _)| n.as_bytes() == name)
        .map(|i| i + 1)
}

/// One connection's decoding context: the dynamic table that mirrors the instance's encoder.
#[derive(Debug, Clone)]
pub(super) struct Decoder {
    /// Newest first.
    entries: VecDeque<Field>,
    size_bytes: usize,
    size_bytes_max: usize,
    /// This side's SETTINGS_HEADER_TABLE_SIZE: the most an update may ask for (§6.3).
    limit_bytes: usize,
}

impl Decoder {
    pub(super) fn new(limit_bytes: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            size_bytes: 0,
            size_bytes_max: limit_bytes,
            limit_bytes,
        }
    }

    /// Decodes a whole header block. On an error the table is left part-way, as a real
    /// decoder's would be; the connection ends then anyway.
    pub(super) fn decode(&mut self, block: &[u8]) -> Result<Vec<Field>, &'static str> {
        let mut rest = block;
        let mut fields = Vec::new();
        while let Some(&first) = rest.first() {
            if first & 0x80 != 0 {
                let index = read_integer(&mut rest, 7)?;
                fields.push(self.entry(index)?);
            } else if first & 0xe0 == 0x20 {
                if !fields.is_empty() {
                    return Err("a table size update after a field");
                }
                let size = read_integer(&mut rest, 5)?;
                if size > self.limit_bytes {
                    return Err("a table size update above the limit");
                }
                self.size_bytes_max = size;
                self.evict_to(size);
            } else {
                let indexing = first & 0xc0 == 0x40;
                let index = read_integer(&mut rest, if indexing { 6 } else { 4 })?;
                let name = if index == 0 {
                    string(&mut rest)?
                } else {
                    self.entry(index)?.0
                };
                let value = string(&mut rest)?;
                if indexing {
                    self.insert(name.clone(), value.clone());
                }
                fields.push((name, value));
            }
        }
        Ok(fields)
    }

    fn entry(&self, index: usize) -> Result<Field, &'static str> {
        if index == 0 {
            return Err("index 0");
        }
        if let Some((n, v)) = STATIC.get(index - 1) {
            return Ok((n.as_bytes().to_vec(), v.as_bytes().to_vec()));
        }
        self.entries
            .get(index - 1 - STATIC.len())
            .cloned()
            .ok_or("an index past both tables")
    }

    /// §4.4: evict until the entry fits; an entry larger than the table empties it.
    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD_BYTES;
        if size > self.size_bytes_max {
            self.entries.clear();
            self.size_bytes = 0;
            return;
        }
        self.evict_to(self.size_bytes_max - size);
        self.entries.push_front((name, value));
        self.size_bytes += size;
    }

    fn evict_to(&mut self, size_bytes: usize) {
        while self.size_bytes > size_bytes {
            let Some((n, v)) = self.entries.pop_back() else {
                break;
            };
            self.size_bytes -= n.len() + v.len() + ENTRY_OVERHEAD_BYTES;
        }
    }
}

/// §5.1, with the client's limits.
pub(super) fn read_integer(rest: &mut &[u8], prefix_bits: u32) -> Result<usize, &'static str> {
    let (&first, tail) = rest.split_first().ok_or("a truncated integer")?;
    *rest = tail;
    let mask = (1usize << prefix_bits) - 1;
    let mut value = usize::from(first) & mask;
    if value < mask {
        return Ok(value);
    }
    for i in 0..CONTINUATIONS_MAX {
        let (&octet, tail) = rest.split_first().ok_or("a truncated integer")?;
        *rest = tail;
        value += usize::from(octet & 0x7f) << (7 * i);
        if octet & 0x80 == 0 {
            return if value > INTEGER_MAX {
                Err("an integer above the limit")
            } else {
                Ok(value)
            };
        }
    }
    Err("an integer of too many octets")
}

/// §5.2.
fn string(rest: &mut &[u8]) -> Result<Vec<u8>, &'static str> {
    let huffman = rest.first().is_some_and(|b| b & 0x80 != 0);
    let len = read_integer(rest, 7)?;
    if len > rest.len() {
        return Err("a string past the block's end");
    }
    let (text, tail) = rest.split_at(len);
    *rest = tail;
    if huffman {
        huffman_decode(text)
    } else {
        Ok(text.to_vec())
    }
}

/// Appendix B: the code of each octet and of EOS (256), and its length in bits.
fn code(symbol: usize) -> (u32, u32) {
    (CODES[symbol], u32::from(LENGTHS[symbol]))
}

/// The code as a binary tree, for decoding bit by bit: each node's two children, a node's
/// index or, below zero, a leaf `-(symbol + 1)`.
fn tree() -> &'static [[i32; 2]] {
    static TREE: OnceLock<Vec<[i32; 2]>> = OnceLock::new();
    TREE.get_or_init(|| {
        let mut nodes = vec![[0i32; 2]];
        for symbol in 0..=256usize {
            let (c, l) = code(symbol);
            let mut at = 0usize;
            for i in (0..l).rev() {
                let bit = ((c >> i) & 1) as usize;
                if i == 0 {
                    nodes[at][bit] = -(symbol as i32 + 1);
                } else {
                    if nodes[at][bit] == 0 {
                        nodes.push([0; 2]);
                        nodes[at][bit] = (nodes.len() - 1) as i32;
                    }
                    at = nodes[at][bit] as usize;
                }
            }
        }
        nodes
    })
}

/// §5.2: a string containing EOS, padding of 8 bits or more, or padding that is not the
/// most significant bits of EOS (all ones) is a decoding error.
pub(super) fn huffman_decode(text: &[u8]) -> Result<Vec<u8>, &'static str> {
    let tree = tree();
    let mut out = Vec::with_capacity(text.len() * 8 / 5);
    // The node reached by the bits since the last symbol, how many, and whether all were 1.
    let (mut at, mut len, mut ones) = (0usize, 0u32, true);
    for byte in text {
        for i in (0..8).rev() {
            let bit = usize::from((byte >> i) & 1);
            len += 1;
            ones &= bit == 1;
            match tree[at][bit] {
                leaf if leaf < 0 => {
                    let symbol = (-leaf - 1) as usize;
                    if symbol == 256 {
                        return Err("EOS in a Huffman string");
                    }
                    out.push(symbol as u8);
                    (at, len, ones) = (0, 0, true);
                }
                node => at = node as usize,
            }
        }
    }
    if len > 7 {
        return Err("Huffman padding of 8 bits or more");
    }
    if !ones {
        return Err("Huffman padding that is not all ones");
    }
    Ok(out)
}

/// The Huffman coding of `text`, padded with ones.
pub(super) fn huffman_encode(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u64, 0u32);
    for &b in text {
        let (c, l) = code(usize::from(b));
        acc = (acc << l) | u64::from(c);
        bits += l;
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(((acc << (8 - bits)) | ((1 << (8 - bits)) - 1)) as u8);
    }
    out
}

/// An integer with a `prefix_bits` prefix (§5.1); `flags` fills the first octet's high bits.
pub(super) fn encode_integer(value: usize, prefix_bits: u32, flags: u8, out: &mut Vec<u8>) {
    let mask = (1usize << prefix_bits) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// A string literal (§5.2), Huffman-coded when `huffman`.
pub(super) fn encode_string(text: &[u8], huffman: bool, out: &mut Vec<u8>) {
    if huffman {
        let coded = huffman_encode(text);
        encode_integer(coded.len(), 7, 0x80, out);
        out.extend_from_slice(&coded);
    } else {
        encode_integer(text.len(), 7, 0, out);
        out.extend_from_slice(text);
    }
}

/// RFC 7541 Appendix B, octets 0 to 255 and EOS: the codes, right-aligned.
const CODES: [u32; 257] = [
    0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7, 0xfffffe8,
    0xffffea, 0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec, 0xfffffed,
    0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3, 0xffffff4,
    0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb, 0x14, 0x3f8,
    0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa, 0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18,
    0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb,
    0x3fc, 0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0,
    0x1ffc, 0x3ffc, 0x22, 0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26, 0x27, 0x6, 0x74, 0x75,
    0x28, 0x29, 0x2a, 0x7, 0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78, 0x79, 0x7a, 0x7b, 0x7ffe,
    0x7fc, 0x3ffd, 0x1ffd, 0xffffffc, 0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4,
    0x3fffd5, 0x7fffd9, 0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb,
    0x7fffdf, 0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3,
    0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef, 0x3fffda,
    0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde, 0x7fffea, 0x3fffdd,
    0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec, 0x1fffe0, 0x1fffe1, 0x3fffe0,
    0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef, 0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4,
    0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1, 0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7,
    0x7ffff2, 0x3fffe8, 0x1ffffec, 0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf,
    0x3ffffe5, 0xfffff1, 0x1ffffed, 0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7,
    0x7ffffe2, 0xfffff2, 0x1fffe4, 0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4,
    0x7ffffe5, 0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3,
    0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4, 0x3ffffeb,
    0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea, 0x7ffffeb,
    0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee, 0x3fffffff,
];

/// The length of each code in bits, in the order of [`CODES`].
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7541 Appendix C.4.1 and C.6.1: known Huffman strings.
    #[test]
    fn huffman_matches_the_rfc_examples() {
        let www = [
            0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ];
        assert_eq!(huffman_encode(b"www.example.com"), www);
        assert_eq!(huffman_decode(&www).unwrap(), b"www.example.com");
        assert_eq!(huffman_encode(b"302"), [0x64, 0x02]);
        assert_eq!(
            huffman_encode(b"no-cache"),
            [0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf]
        );
        assert!(huffman_decode(&[0xff, 0xff, 0xff, 0xff]).is_err());
        assert_eq!(huffman_decode(&[0x64, 0x00]).unwrap(), b"300");
        // "3" then padding 10, not all ones.
        assert!(huffman_decode(&[0x66]).is_err());
        assert_eq!(huffman_decode(&[0x67]).unwrap(), b"3");
    }

    /// RFC 7541 Appendix C.3: three requests sharing a dynamic table.
    #[test]
    fn the_dynamic_table_follows_the_rfc_example() {
        let mut d = Decoder::new(4096);
        let first = [
            0x82, 0x86, 0x84, 0x41, 0x0f, b'w', b'w', b'w', b'.', b'e', b'x', b'a', b'm', b'p',
            b'l', b'e', b'.', b'c', b'o', b'm',
        ];
        let fields = d.decode(&first).unwrap();
        assert_eq!(
            fields[3],
            (b":authority".to_vec(), b"www.example.com".to_vec())
        );
        let second = [
            0x82, 0x86, 0x84, 0xbe, 0x58, 0x08, b'n', b'o', b'-', b'c', b'a', b'c', b'h', b'e',
        ];
        let fields = d.decode(&second).unwrap();
        assert_eq!(fields[3].1, b"www.example.com");
        assert_eq!(fields[4], (b"cache-control".to_vec(), b"no-cache".to_vec()));
        assert_eq!(d.size_bytes, 110);
        assert!(d.decode(&[0x80 | 64]).is_err());
        assert!(d.decode(&[0x82, 0x20]).is_err());
        assert!(d.decode(&[0x3f, 0xe2, 0x1f]).is_err());
    }
}
