//! The Huffman code of RFC 7541 Appendix B, and its decoder.
//!
//! The code is canonical: codes of one length are consecutive numbers in symbol order, and
//! the first code of each length follows from the counts of the shorter lengths. The decoder
//! therefore needs no tree. The common characters (lower-case letters, digits, most
//! punctuation) have codes of at most 8 bits, which a 256-entry table indexed by the next
//! octet of input resolves at once. For a longer code, the decoder keeps the first code of
//! each length and the bound past the last one, and finds the code's length by comparing the
//! next 32 bits of input against those bounds. The tables are computed at compile time from
//! the lengths below, and the build fails if the codes of Appendix B are not the canonical
//! ones.

use super::DecodeError;

/// The code of each symbol, right-aligned: octets 0 to 255, then EOS (256). These are the
/// values of RFC 7541 Appendix B, eight to a line.
pub(super) const CODES: [u32; 257] = [
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
/// The length of each symbol's code, in the order of [`CODES`], sixteen to a line.
pub(super) const CODE_LENGTHS_BITS: [u8; 257] = [
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

/// The symbol that ends a Huffman string. It never appears inside one (RFC 7541 §5.2).
pub(super) const EOS: u16 = 256;

/// The shortest and the longest code of Appendix B.
const LENGTH_MIN_BITS: u32 = 5;
const LENGTH_MAX_BITS: u32 = 30;

/// The longest code the one-octet table resolves.
const FAST_LENGTH_MAX_BITS: u32 = 8;

/// The most padding a string may end with: less than one octet (RFC 7541 §5.2).
const PADDING_MAX_BITS: u32 = 7;

/// The decoding tables of the canonical code.
struct Canonical {
    /// For each value of the next 8 bits, the symbol whose code they start with and the code's
    /// length, as `length << 9 | symbol`, if that code is at most 8 bits long; 0 otherwise.
    fast: [u16; 256],
    /// One past the last code of each length, left-aligned in 32 bits. Held in a `u64` because
    /// the bound of the longest length is 2^32: every 32-bit window lies below it.
    limits: [u64; 31],
    /// The first code of each length, right-aligned.
    firsts: [u32; 31],
    /// Where the symbols of each length start in `symbols`.
    offsets: [u16; 31],
    /// The symbols ordered by code length, then by value: the canonical order.
    symbols: [u16; 257],
}

/// Derives the tables from the code lengths, and checks at compile time that the codes of
/// Appendix B are exactly the canonical codes of those lengths and that together they cover
/// every bit string. The decoder relies on both: the first so that it decodes the RFC's code,
/// the second so that its search over lengths always ends on a symbol.
const fn canonical() -> Canonical {
    let mut counts = [0u32; 31];
    let mut symbol = 0;
    while symbol < 257 {
        let length = CODE_LENGTHS_BITS[symbol] as usize;
        assert!(length >= LENGTH_MIN_BITS as usize && length <= LENGTH_MAX_BITS as usize);
        counts[length] += 1;
        symbol += 1;
    }

    let mut tables = Canonical {
        fast: [0; 256],
        limits: [0; 31],
        firsts: [0; 31],
        offsets: [0; 31],
        symbols: [0; 257],
    };
    let mut code: u32 = 0;
    let mut offset: u16 = 0;
    let mut length = 1;
    while length <= LENGTH_MAX_BITS as usize {
        tables.firsts[length] = code;
        tables.offsets[length] = offset;
        let end = code + counts[length];
        tables.limits[length] = (end as u64) << (32 - length);
        // Place this length's symbols in value order, and check each against its code.
        let mut symbol = 0;
        while symbol < 257 {
            if CODE_LENGTHS_BITS[symbol] as usize == length {
                assert!(CODES[symbol] == code, "Appendix B codes are not canonical");
                tables.symbols[offset as usize] = symbol as u16;
                if length <= FAST_LENGTH_MAX_BITS as usize {
                    // Every octet that starts with this code decodes to it.
                    let free_bits = FAST_LENGTH_MAX_BITS as usize - length;
                    let first = (code as usize) << free_bits;
                    let mut octet = first;
                    while octet < first + (1 << free_bits) {
                        tables.fast[octet] = ((length as u16) << 9) | symbol as u16;
                        octet += 1;
                    }
                }
                offset += 1;
                code += 1;
            }
            symbol += 1;
        }
        code <<= 1;
        length += 1;
    }
    // The longest codes end exactly at the all-ones string of 30 bits: the code is complete.
    assert!(tables.limits[LENGTH_MAX_BITS as usize] == 1 << 32);
    assert!(offset == 257);
    tables
}

static CANONICAL: Canonical = canonical();

/// Finds the symbol whose code starts the 32-bit `window`, and its length in bits. Whatever
/// the window, some code starts it, since the code is complete.
#[inline]
fn lookup(window: u32) -> (u16, u32) {
    let fast = CANONICAL.fast[(window >> 24) as usize];
    if fast != 0 {
        return (fast & 0x1ff, u32::from(fast >> 9));
    }
    let wide = u64::from(window);
    let mut length = FAST_LENGTH_MAX_BITS + 1;
    // Bounded by the longest length, whose limit lies above every window (checked at compile
    // time).
    while length < LENGTH_MAX_BITS && wide >= CANONICAL.limits[length as usize] {
        length += 1;
    }
    let rank = (window >> (32 - length)).wrapping_sub(CANONICAL.firsts[length as usize]);
    let index = usize::from(CANONICAL.offsets[length as usize]) + rank as usize;
    // An index past the table cannot happen with a complete code; answering EOS then turns
    // a broken table into a decoding error instead of a panic.
    let symbol = CANONICAL.symbols.get(index).copied().unwrap_or(EOS);
    (symbol, length)
}

/// Decodes the Huffman string `src`, appending the octets to `dst`.
///
/// `dst` grows by at most `src.len() * 8 / 5` octets, since no code is shorter than 5 bits.
pub(super) fn decode(src: &[u8], dst: &mut Vec<u8>) -> Result<(), DecodeError> {
    dst.reserve(src.len() * 8 / LENGTH_MIN_BITS as usize);
    // The bits not yet consumed, left-aligned: bit 63 is the next one. Below the last of them
    // the bits are zeros.
    let mut pending: u64 = 0;
    let mut pending_bits: u32 = 0;
    let mut rest = src;
    loop {
        // Keep at least the longest code's worth of bits while the input lasts, topping up
        // several octets at a time.
        if pending_bits < LENGTH_MAX_BITS {
            while pending_bits <= 56 {
                let Some((&octet, tail)) = rest.split_first() else {
                    break;
                };
                pending |= u64::from(octet) << (56 - pending_bits);
                pending_bits += 8;
                rest = tail;
            }
            if pending_bits == 0 {
                return Ok(());
            }
        }
        let window = (pending >> 32) as u32;
        // Near the end, the window reads zeros past the input. A code found within the real
        // bits is found whatever follows them (no code is a prefix of another); a code found
        // longer than them means that what is left is padding.
        let (symbol, length_bits) = lookup(window);
        if length_bits > pending_bits {
            // Padding must be a prefix of EOS (all ones) shorter than one octet.
            if pending_bits > PADDING_MAX_BITS {
                return Err(DecodeError::HuffmanPaddingTooLong);
            }
            let padding_mask = !(u32::MAX >> pending_bits);
            if window & padding_mask != padding_mask {
                return Err(DecodeError::HuffmanPaddingNotOnes);
            }
            return Ok(());
        }
        if symbol == EOS {
            return Err(DecodeError::HuffmanEos);
        }
        // Symbols other than EOS are octets.
        dst.push(symbol as u8);
        pending <<= length_bits;
        pending_bits -= length_bits;
    }
}

/// Codes `symbols` and pads the end with ones: the encoder the tests need to build good and bad
/// input (EOS is allowed here). The client itself never sends Huffman-coded strings.
#[cfg(test)]
pub(super) fn encode_symbols(symbols: &[u16]) -> Vec<u8> {
    let mut out = Vec::new();
    // The bits not yet written, right-aligned; fewer than 8 remain between symbols.
    let mut pending: u64 = 0;
    let mut pending_bits: u32 = 0;
    for &symbol in symbols {
        let symbol = usize::from(symbol);
        let length_bits = u32::from(CODE_LENGTHS_BITS[symbol]);
        pending = (pending << length_bits) | u64::from(CODES[symbol]);
        pending_bits += length_bits;
        while pending_bits >= 8 {
            pending_bits -= 8;
            out.push((pending >> pending_bits) as u8);
        }
    }
    if pending_bits > 0 {
        let padding_bits = 8 - pending_bits;
        out.push(((pending << padding_bits) | ((1 << padding_bits) - 1)) as u8);
    }
    out
}
