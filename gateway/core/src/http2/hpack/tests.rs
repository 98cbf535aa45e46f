//! Tests of the HPACK decoder and encoder. The reference is RFC 7541 itself: the examples of
//! Appendix C are typed in as hex, with `|` between fields so that truncation can be tested at
//! every cut. The test-only Huffman encoder is checked against the Huffman strings of those
//! examples before the round trips rely on it.

use std::collections::VecDeque;

use bytes::BytesMut;
use proptest::prelude::*;

use super::DecodeError as E;
use super::huffman::EOS;
use super::*;

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    assert!(digits.len().is_multiple_of(2), "odd hex: {text}");
    let digit = |d: u8| char::from(d).to_digit(16).expect("hex digit") as u8;
    digits
        .chunks(2)
        .map(|pair| (digit(pair[0]) << 4) | digit(pair[1]))
        .collect()
}

fn owned(pairs: &[(&str, &str)]) -> Fields {
    pairs
        .iter()
        .map(|(name, value)| (name.as_bytes().to_vec(), value.as_bytes().to_vec()))
        .collect()
}

fn decode_all(decoder: &mut Decoder, block: &[u8]) -> Result<Fields, DecodeError> {
    let mut fields = Vec::new();
    let result = decoder.decode(block, usize::MAX, |name, value| {
        fields.push((name.to_vec(), value.to_vec()));
    })?;
    assert!(!result.oversize);
    Ok(fields)
}

/// The error that decoding the hex `block` ends in.
fn fails(decoder: &mut Decoder, block: &str) -> DecodeError {
    decode_all(decoder, &hex(block)).expect_err(block)
}

/// The dynamic table's entries, newest first.
fn table_of(decoder: &Decoder) -> Fields {
    (0..)
        .map_while(|position| decoder.table.get(position))
        .map(|(name, value)| (name.to_vec(), value.to_vec()))
        .collect()
}

fn huffman_encode(text: &[u8]) -> Vec<u8> {
    let symbols: Vec<u16> = text.iter().map(|&b| u16::from(b)).collect();
    huffman::encode_symbols(&symbols)
}

fn huffman_decode(coded: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    huffman::decode(coded, &mut out)?;
    Ok(out)
}

/// Writes a string literal, Huffman-coded or not (§5.2).
fn put_string(text: &[u8], huffman: bool, dst: &mut BytesMut) {
    if huffman {
        let coded = huffman_encode(text);
        encode_integer(coded.len(), 7, 0x80, dst);
        dst.extend_from_slice(&coded);
    } else {
        encode_integer(text.len(), 7, 0x00, dst);
        dst.extend_from_slice(text);
    }
}

/// Writes a Literal Header Field with Incremental Indexing and a new name (§6.2.1).
fn put_indexed_literal(name: &[u8], value: &[u8], huffman: bool, dst: &mut BytesMut) {
    dst.extend_from_slice(&[0x40]);
    put_string(name, huffman, dst);
    put_string(value, huffman, dst);
}

// ---------------------------------------------------------------------------------------------
// RFC 7541 Appendix C.

type List = &'static [(&'static str, &'static str)];

/// What a block of a sequence decodes to: the list, the dynamic table afterwards (newest
/// first) and the table's size in bytes.
type Expected = (List, List, usize);

/// The offsets at which a block written with `|` between fields may be cut into a shorter
/// valid block.
fn boundaries(block: &str) -> Vec<usize> {
    let mut offset = 0;
    let mut boundaries = vec![0];
    for piece in block.split('|') {
        offset += hex(piece).len();
        boundaries.push(offset);
    }
    boundaries
}

const REQUEST_1: &[(&str, &str)] = &[
    (":method", "GET"),
    (":scheme", "http"),
    (":path", "/"),
    (":authority", "www.example.com"),
];
const REQUEST_2: &[(&str, &str)] = &[
    (":method", "GET"),
    (":scheme", "http"),
    (":path", "/"),
    (":authority", "www.example.com"),
    ("cache-control", "no-cache"),
];
const REQUEST_3: &[(&str, &str)] = &[
    (":method", "GET"),
    (":scheme", "https"),
    (":path", "/index.html"),
    (":authority", "www.example.com"),
    ("custom-key", "custom-value"),
];
const REQUEST_TABLE_1: &[(&str, &str)] = &[(":authority", "www.example.com")];
const REQUEST_TABLE_2: &[(&str, &str)] = &[
    ("cache-control", "no-cache"),
    (":authority", "www.example.com"),
];
const REQUEST_TABLE_3: &[(&str, &str)] = &[
    ("custom-key", "custom-value"),
    ("cache-control", "no-cache"),
    (":authority", "www.example.com"),
];

/// C.3 and C.4 decode to these.
const REQUESTS: [Expected; 3] = [
    (REQUEST_1, REQUEST_TABLE_1, 57),
    (REQUEST_2, REQUEST_TABLE_2, 110),
    (REQUEST_3, REQUEST_TABLE_3, 164),
];

/// C.3: requests without Huffman coding.
const C3: [&str; 3] = [
    "82 | 86 | 84 | 41 0f 7777 772e 6578 616d 706c 652e 636f 6d",
    "82 | 86 | 84 | be | 58 08 6e6f 2d63 6163 6865",
    "82 | 87 | 85 | bf | \
     40 0a 6375 7374 6f6d 2d6b 6579 0c 6375 7374 6f6d 2d76 616c 7565",
];

/// C.4: the same requests with Huffman coding.
const C4: [&str; 3] = [
    "82 | 86 | 84 | 41 8c f1e3 c2e5 f23a 6ba0 ab90 f4ff",
    "82 | 86 | 84 | be | 58 86 a8eb 1064 9cbf",
    "82 | 87 | 85 | bf | 40 88 25a8 49e9 5ba9 7d7f 89 25a8 49e9 5bb8 e8b4 bf",
];

const DATE_21: &str = "Mon, 21 Oct 2013 20:13:21 GMT";
const DATE_22: &str = "Mon, 21 Oct 2013 20:13:22 GMT";
const LOCATION: &str = "https://www.example.com";
const COOKIE: &str = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";

const RESPONSE_1: &[(&str, &str)] = &[
    (":status", "302"),
    ("cache-control", "private"),
    ("date", DATE_21),
    ("location", LOCATION),
];
const RESPONSE_2: &[(&str, &str)] = &[
    (":status", "307"),
    ("cache-control", "private"),
    ("date", DATE_21),
    ("location", LOCATION),
];
const RESPONSE_3: &[(&str, &str)] = &[
    (":status", "200"),
    ("cache-control", "private"),
    ("date", DATE_22),
    ("location", LOCATION),
    ("content-encoding", "gzip"),
    ("set-cookie", COOKIE),
];
const RESPONSE_TABLE_1: &[(&str, &str)] = &[
    ("location", LOCATION),
    ("date", DATE_21),
    ("cache-control", "private"),
    (":status", "302"),
];
const RESPONSE_TABLE_2: &[(&str, &str)] = &[
    (":status", "307"),
    ("location", LOCATION),
    ("date", DATE_21),
    ("cache-control", "private"),
];
const RESPONSE_TABLE_3: &[(&str, &str)] = &[
    ("set-cookie", COOKIE),
    ("content-encoding", "gzip"),
    ("date", DATE_22),
];

/// C.5 and C.6 decode to these.
const RESPONSES: [Expected; 3] = [
    (RESPONSE_1, RESPONSE_TABLE_1, 222),
    (RESPONSE_2, RESPONSE_TABLE_2, 222),
    (RESPONSE_3, RESPONSE_TABLE_3, 215),
];

/// C.5: responses without Huffman coding, with a table of 256 bytes that evicts.
const C5: [&str; 3] = [
    "48 03 3330 32 | 58 07 7072 6976 6174 65 | \
     61 1d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3120 474d 54 | \
     6e 17 6874 7470 733a 2f2f 7777 772e 6578 616d 706c 652e 636f 6d",
    "48 03 3330 37 | c1 | c0 | bf",
    "88 | c1 | \
     61 1d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54 | \
     c0 | 5a 04 677a 6970 | \
     77 38 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 \
     4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31",
];

/// C.6: the same responses with Huffman coding.
const C6: [&str; 3] = [
    "48 82 6402 | 58 85 aec3 771a 4b | \
     61 96 d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff | \
     6e 91 9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3",
    "48 83 640e ff | c1 | c0 | bf",
    "88 | c1 | 61 96 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff | c0 | \
     5a 83 9bd9 ab | \
     77 ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 \
     291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
];

/// Decodes a sequence on one decoder, checking each list and the table after each block.
fn run_sequence(name: &str, table_bytes_max: usize, blocks: [&str; 3], expected: [Expected; 3]) {
    let mut decoder = Decoder::new(table_bytes_max);
    for (number, (block, (list, table, size_bytes))) in (1..).zip(blocks.iter().zip(expected)) {
        let fields = decode_all(&mut decoder, &hex(block))
            .unwrap_or_else(|error| panic!("{name} block {number}: {error}"));
        assert_eq!(fields, owned(list), "{name} block {number} list");
        assert_eq!(table_of(&decoder), owned(table), "{name} block {number}");
        let table_bytes = decoder.table.size_bytes;
        assert_eq!(table_bytes, size_bytes, "{name} block {number} size");
    }
}

/// Cuts each block of a sequence at every offset, on a decoder that has decoded the blocks
/// before it: a cut at a field boundary is a shorter valid block, any other a truncation.
fn cut_sequence(name: &str, table_bytes_max: usize, blocks: [&str; 3], expected: [Expected; 3]) {
    for (number, (block, (list, _, _))) in blocks.iter().zip(expected).enumerate() {
        let boundaries = boundaries(block);
        let block = hex(block);
        for cut in 0..block.len() {
            let mut decoder = Decoder::new(table_bytes_max);
            for earlier in &blocks[..number] {
                decode_all(&mut decoder, &hex(earlier)).expect("earlier block decodes");
            }
            let result = decode_all(&mut decoder, &block[..cut]);
            let context = format!("{name} block {} cut at {cut}: {result:?}", number + 1);
            match boundaries.iter().position(|&boundary| boundary == cut) {
                Some(count) => assert_eq!(result, Ok(owned(&list[..count])), "{context}"),
                None => assert!(
                    matches!(result, Err(E::TruncatedInteger | E::TruncatedString { .. })),
                    "{context}"
                ),
            }
        }
    }
}

#[test]
fn c1_integer_examples() {
    // C.1.1: 10 with a 5-bit prefix; C.1.2: 1337 with a 5-bit prefix; C.1.3: 42 on an octet.
    let cases: [(usize, u32, &str); 3] = [(10, 5, "0a"), (1337, 5, "1f 9a 0a"), (42, 8, "2a")];
    for (value, prefix_bits, coded) in cases {
        let coded = hex(coded);
        assert_eq!(decode_integer(&coded, prefix_bits), Ok((value, &[][..])));
        let mut dst = BytesMut::new();
        encode_integer(value, prefix_bits, 0, &mut dst);
        assert_eq!(&dst[..], &coded[..], "encoding {value}");
    }
}

/// Decodes one block of Appendix C.2 on a new decoder: its list and the table afterwards.
fn c2(block: &str) -> (Fields, Fields, usize) {
    let mut decoder = Decoder::new(4096);
    let fields = decode_all(&mut decoder, &hex(block)).expect(block);
    (fields, table_of(&decoder), decoder.table.size_bytes)
}

#[test]
fn c2_1_literal_with_indexing() {
    let entry = owned(&[("custom-key", "custom-header")]);
    let block = "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572";
    assert_eq!(c2(block), (entry.clone(), entry, 55));
}

#[test]
fn c2_2_literal_without_indexing() {
    let fields = owned(&[(":path", "/sample/path")]);
    let block = "040c 2f73 616d 706c 652f 7061 7468";
    assert_eq!(c2(block), (fields, Vec::new(), 0));
}

#[test]
fn c2_3_literal_never_indexed() {
    let fields = owned(&[("password", "secret")]);
    let block = "1008 7061 7373 776f 7264 0673 6563 7265 74";
    assert_eq!(c2(block), (fields, Vec::new(), 0));
}

#[test]
fn c2_4_indexed() {
    assert_eq!(c2("82"), (owned(&[(":method", "GET")]), Vec::new(), 0));
}

#[test]
fn c3_requests_without_huffman() {
    run_sequence("C.3", 4096, C3, REQUESTS);
}

#[test]
fn c4_requests_with_huffman() {
    run_sequence("C.4", 4096, C4, REQUESTS);
}

#[test]
fn c5_responses_without_huffman_evict() {
    run_sequence("C.5", 256, C5, RESPONSES);
}

#[test]
fn c6_responses_with_huffman_evict() {
    run_sequence("C.6", 256, C6, RESPONSES);
}

#[test]
fn every_cut_of_the_appendix_c_blocks_is_a_prefix_or_a_truncation() {
    cut_sequence("C.3", 4096, C3, REQUESTS);
    cut_sequence("C.4", 4096, C4, REQUESTS);
    cut_sequence("C.5", 256, C5, RESPONSES);
    cut_sequence("C.6", 256, C6, RESPONSES);
}

// ---------------------------------------------------------------------------------------------
// Huffman.

#[test]
fn huffman_test_encoder_matches_the_rfc_strings() {
    // The Huffman strings of C.4 and C.6, so that the round trips below rest on a correct
    // encoder.
    let cases = [
        ("www.example.com", "f1e3 c2e5 f23a 6ba0 ab90 f4ff"),
        ("no-cache", "a8eb 1064 9cbf"),
        ("custom-key", "25a8 49e9 5ba9 7d7f"),
        ("custom-value", "25a8 49e9 5bb8 e8b4 bf"),
        ("302", "6402"),
        ("307", "640e ff"),
        ("private", "aec3 771a 4b"),
        (
            DATE_21,
            "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff",
        ),
        (LOCATION, "9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3"),
        ("gzip", "9bd9 ab"),
    ];
    for (text, coded) in cases {
        assert_eq!(huffman_encode(text.as_bytes()), hex(coded), "{text}");
        assert_eq!(huffman_decode(&hex(coded)), Ok(text.as_bytes().to_vec()));
    }
}

#[test]
fn huffman_round_trips_every_octet() {
    for octet in 0..=u8::MAX {
        for repeat in [1, 2, 3, 7] {
            let text = vec![octet; repeat];
            let coded = huffman_encode(&text);
            assert_eq!(huffman_decode(&coded), Ok(text), "octet {octet} x{repeat}");
        }
    }
    let all: Vec<u8> = (0..=u8::MAX).collect();
    assert_eq!(huffman_decode(&huffman_encode(&all)), Ok(all.clone()));
    let reversed: Vec<u8> = all.iter().rev().copied().collect();
    assert_eq!(huffman_decode(&huffman_encode(&reversed)), Ok(reversed));
    assert_eq!(huffman_decode(&[]), Ok(Vec::new()));
}

#[test]
fn huffman_rejects_eos() {
    // EOS alone: 30 ones, then two bits of padding.
    assert_eq!(huffman_decode(&hex("ffff ffff")), Err(E::HuffmanEos));
    // EOS between two symbols, and at the end of a string.
    let a = u16::from(b'a');
    for symbols in [[a, EOS, a], [a, a, EOS]] {
        let coded = huffman::encode_symbols(&symbols);
        assert_eq!(huffman_decode(&coded), Err(E::HuffmanEos), "{symbols:?}");
    }
}

#[test]
fn huffman_rejects_padding_longer_than_7_bits() {
    // 'a' is 00011, then 3 + 8 bits of ones.
    assert_eq!(huffman_decode(&hex("1fff")), Err(E::HuffmanPaddingTooLong));
    // A whole octet of ones, with nothing before it.
    assert_eq!(huffman_decode(&hex("ff")), Err(E::HuffmanPaddingTooLong));
    // A complete string followed by an octet of ones.
    let mut coded = huffman_encode(b"www.example.com");
    coded.push(0xff);
    assert_eq!(huffman_decode(&coded), Err(E::HuffmanPaddingTooLong));
}

#[test]
fn huffman_rejects_padding_that_is_not_all_ones() {
    // 'a' (00011), then 000, 101, or 110 (a prefix of longer codes, not of EOS).
    for coded in ["18", "1d", "1e"] {
        assert_eq!(
            huffman_decode(&hex(coded)),
            Err(E::HuffmanPaddingNotOnes),
            "{coded}"
        );
    }
}

#[test]
fn huffman_errors_surface_from_the_block_decoder() {
    // A literal without indexing, static name `:path`, whose value is a bad Huffman string.
    let cases = [
        ("04 84 ffff ffff", E::HuffmanEos),
        ("04 82 1fff", E::HuffmanPaddingTooLong),
        ("04 81 18", E::HuffmanPaddingNotOnes),
    ];
    for (block, error) in cases {
        assert_eq!(fails(&mut Decoder::new(4096), block), error);
    }
}

// ---------------------------------------------------------------------------------------------
// Errors.

#[test]
fn index_zero_is_an_error() {
    assert_eq!(fails(&mut Decoder::new(4096), "80"), E::IndexZero);
}

#[test]
fn indices_past_the_tables_are_errors() {
    let past = |index, entries| E::IndexOutOfRange { index, entries };
    // Indexed field 62 with an empty dynamic table, then names with index 62 (6-bit and 4-bit
    // prefixes).
    let mut decoder = Decoder::new(4096);
    assert_eq!(fails(&mut decoder, "be"), past(62, 61));
    assert_eq!(fails(&mut decoder, "7e 01 61"), past(62, 61));
    assert_eq!(fails(&mut decoder, "0f 2f 01 61"), past(62, 61));
    // With one entry, 62 is valid and 63 is not; a large index is refused too.
    decode_all(&mut decoder, &hex("41 01 61")).expect("adds :authority: a");
    let found = decode_all(&mut decoder, &hex("be"));
    assert_eq!(found, Ok(owned(&[(":authority", "a")])));
    assert_eq!(fails(&mut decoder, "bf"), past(63, 62));
    let large = 127 + 127 + (127 << 7) + (7 << 14);
    assert_eq!(fails(&mut decoder, "ff ff ff 07"), past(large, 62));
}

#[test]
fn integers_beyond_the_limit_are_errors() {
    let mut decoder = Decoder::new(4096);
    // Five continuation octets, even of zeros; four carrying more than 2^24; a string length
    // above 2^24.
    assert_eq!(fails(&mut decoder, "ff 80 80 80 80 00"), E::IntegerOverflow);
    assert_eq!(fails(&mut decoder, "ff ff ff ff 7f"), E::IntegerOverflow);
    assert_eq!(fails(&mut decoder, "04 7f ff ff ff 7f"), E::IntegerOverflow);
    // Exactly 2^24 as a string length is accepted as an integer, then is truncated.
    let mut block = BytesMut::from(&[0x04][..]);
    encode_integer(1 << 24, 7, 0, &mut block);
    let (length_bytes, left_bytes) = (1 << 24, 0);
    let truncated = E::TruncatedString {
        length_bytes,
        left_bytes,
    };
    assert_eq!(decode_all(&mut decoder, &block), Err(truncated));
}

#[test]
fn truncated_integers_and_strings_are_errors() {
    let string = |length_bytes, left_bytes| E::TruncatedString {
        length_bytes,
        left_bytes,
    };
    let cases = [
        ("ff", E::TruncatedInteger),
        ("ff 80", E::TruncatedInteger),
        ("3f", E::TruncatedInteger),
        ("04", E::TruncatedInteger),
        ("00 7f", E::TruncatedInteger),
        ("04 05 6162", string(5, 2)),
        ("00 01 61", E::TruncatedInteger),
        ("00 01 61 83 ff", string(3, 1)),
    ];
    for (block, error) in cases {
        assert_eq!(fails(&mut Decoder::new(4096), block), error, "{block}");
    }
}

#[test]
fn table_size_update_after_a_field_is_an_error() {
    assert_eq!(
        fails(&mut Decoder::new(4096), "82 20"),
        E::TableSizeUpdateLate
    );
    let block = "20 82 3f e1 1f";
    assert_eq!(
        fails(&mut Decoder::new(4096), block),
        E::TableSizeUpdateLate
    );
}

#[test]
fn table_size_update_above_the_limit_is_an_error() {
    let above = |size_bytes, limit_bytes| E::TableSizeAboveLimit {
        size_bytes,
        limit_bytes,
    };
    // 4097 with a 5-bit prefix: 31, then 4066 = 0x62 + 31 * 128. 4096 itself is allowed.
    assert_eq!(
        fails(&mut Decoder::new(4096), "3f e2 1f"),
        above(4097, 4096)
    );
    let allowed = decode_all(&mut Decoder::new(4096), &hex("3f e1 1f 82"));
    assert_eq!(allowed, Ok(owned(&[(":method", "GET")])));
    // A decoder that allows no table refuses any size but 0.
    let mut decoder = Decoder::new(0);
    assert_eq!(decode_all(&mut decoder, &hex("20")), Ok(Vec::new()));
    assert_eq!(fails(&mut decoder, "21"), above(1, 0));
}

#[test]
fn table_size_updates_at_the_start_evict_and_resize() {
    let mut decoder = Decoder::new(4096);
    for block in C3 {
        decode_all(&mut decoder, &hex(block)).expect("C.3 decodes");
    }
    assert_eq!(decoder.table.size_bytes, 164);
    // Shrink to 110: the oldest entry (:authority, 57) goes.
    decode_all(&mut decoder, &hex("3f 4f")).expect("update to 110");
    assert_eq!(table_of(&decoder), owned(&REQUEST_TABLE_3[..2]));
    // Two updates in one block (§4.2): to 0, which empties the table, then back to 4096.
    let fields = decode_all(&mut decoder, &hex("20 3f e1 1f 82")).expect("two updates");
    assert_eq!(fields, owned(&[(":method", "GET")]));
    assert!(table_of(&decoder).is_empty());
    assert_eq!(decoder.table.size_bytes_max, 4096);
    // The table fills again.
    decode_all(&mut decoder, &hex(C3[0])).expect("C.3.1 again");
    assert_eq!(table_of(&decoder), owned(REQUEST_TABLE_1));
}

#[test]
fn an_entry_larger_than_the_table_empties_it() {
    let mut decoder = Decoder::new(256);
    decode_all(&mut decoder, &hex(C5[0])).expect("C.5.1 decodes");
    assert_eq!(decoder.table.size_bytes, 222);
    // New name "x" and a value of 224 octets: 1 + 224 + 32 = 257.
    let mut block = BytesMut::new();
    put_indexed_literal(b"x", &[b'v'; 224], false, &mut block);
    let fields = decode_all(&mut decoder, &block).expect("decodes");
    assert_eq!(fields, vec![(b"x".to_vec(), vec![b'v'; 224])]);
    assert_eq!(
        (table_of(&decoder), decoder.table.size_bytes),
        (Vec::new(), 0)
    );
    // One octet less fits exactly.
    let mut block = BytesMut::new();
    put_indexed_literal(b"x", &[b'v'; 223], false, &mut block);
    decode_all(&mut decoder, &block).expect("decodes");
    assert_eq!(decoder.table.size_bytes, 256);
}

#[test]
fn a_name_from_the_entry_being_evicted_is_kept() {
    // The table holds 70 bytes: "name: 1" (4 + 1 + 32 = 37) fits, a second entry of 41
    // evicts it, and that second entry takes its name from it (§4.4).
    let mut decoder = Decoder::new(70);
    decode_all(&mut decoder, &hex("40 04 6e61 6d65 01 31")).expect("adds name: 1");
    let fields = decode_all(&mut decoder, &hex("7e 05 3232 3232 32")).expect("re-uses the name");
    assert_eq!(fields, owned(&[("name", "22222")]));
    assert_eq!(table_of(&decoder), fields);
    assert_eq!(decoder.table.size_bytes, 41);
}

#[test]
fn an_oversize_list_still_updates_the_table() {
    let mut decoder = Decoder::new(4096);
    let big = vec![b'b'; 200];
    // grpc-status: 0 (11 + 1 + 32 = 44) and x-big: 200 octets (5 + 200 + 32 = 237), both
    // indexed, then a static field.
    let mut block = BytesMut::new();
    put_indexed_literal(b"grpc-status", b"0", true, &mut block);
    put_indexed_literal(b"x-big", &big, false, &mut block);
    block.extend_from_slice(&[0x88]);

    let mut fields = Vec::new();
    let result = decoder.decode(&block, 100, |name, value| {
        fields.push((name.to_vec(), value.to_vec()));
    });
    assert_eq!(result, Ok(Block { oversize: true }));
    assert_eq!(fields, owned(&[("grpc-status", "0")]));

    // The next block refers to both entries, which the peer's table now holds.
    let fields = decode_all(&mut decoder, &hex("be bf")).expect("refers to the entries");
    let expected = [(&b"x-big"[..], &big[..]), (b"grpc-status", b"0")];
    assert_eq!(fields, expected.map(|(n, v)| (n.to_vec(), v.to_vec())));
}

#[test]
fn a_list_exactly_at_the_bound_is_not_oversize() {
    let mut decoder = Decoder::new(4096);
    // :method: GET is 7 + 3 + 32 = 42.
    for (list_bytes_max, oversize, calls_expected) in [(84, false, 2), (83, true, 1)] {
        let mut calls = 0;
        let result = decoder.decode(&hex("82 82"), list_bytes_max, |_, _| calls += 1);
        assert_eq!(result, Ok(Block { oversize }));
        assert_eq!(calls, calls_expected);
    }
}

#[test]
fn the_table_stops_allocating_once_warm_and_stays_bounded() {
    let table_bytes_max = 256;
    let mut decoder = Decoder::new(table_bytes_max);
    let mut capacities = None;
    for round in 0..2000_usize {
        // Entries of varied sizes, some named after the newest entry, so that eviction and the
        // draining of the arena both happen often.
        let mut block = BytesMut::new();
        let value = vec![b'a' + (round % 26) as u8; round % 90];
        if round % 3 == 0 && round > 0 {
            block.extend_from_slice(&[0x7e]);
            put_string(&value, round % 4 == 0, &mut block);
        } else {
            let name = format!("name-{}", round % 7);
            put_indexed_literal(name.as_bytes(), &value, round % 2 == 0, &mut block);
        }
        block.extend_from_slice(&[0xbe]);
        let fields = decode_all(&mut decoder, &block).expect("decodes");
        assert_eq!(fields[0].1, value);
        assert_eq!(fields[0], fields[1], "the entry is indexed at 62");
        assert!(decoder.table.size_bytes <= table_bytes_max);
        assert!(decoder.table.arena.len() <= 2 * table_bytes_max);
        let table = &decoder.table;
        let now = (
            table.arena.capacity(),
            table.slots.capacity(),
            decoder.scratch.capacity(),
        );
        if round == 200 {
            capacities = Some(now);
        } else if round > 200 {
            assert_eq!(Some(now), capacities, "round {round}");
        }
    }
}

#[test]
fn debug_shows_no_header_values() {
    let mut decoder = Decoder::new(4096);
    decode_all(&mut decoder, &hex("40 06 7365 6372 6574 06 6869 6464 656e")).expect("decodes");
    let shown = format!("{decoder:?}");
    assert!(shown.contains("table_entries: 1"), "{shown}");
    assert!(
        !shown.contains("hidden") && !shown.contains("104"),
        "{shown}"
    );
}

#[test]
fn the_table_limit_is_clamped() {
    let decoder = Decoder::new(usize::MAX);
    assert_eq!(decoder.table_bytes_limit, 1 << 24);
    assert_eq!(decoder.table.arena_bytes_max, 1 << 25);
}

// ---------------------------------------------------------------------------------------------
// Encoding.

#[test]
fn the_constants_name_the_right_static_entries() {
    let cases: [(usize, &str, &str); 10] = [
        (AUTHORITY, ":authority", ""),
        (METHOD_GET, ":method", "GET"),
        (METHOD_POST, ":method", "POST"),
        (PATH, ":path", "/"),
        (SCHEME_HTTP, ":scheme", "http"),
        (SCHEME_HTTPS, ":scheme", "https"),
        (CONTENT_TYPE, "content-type", ""),
        (USER_AGENT, "user-agent", ""),
        (VIA, "via", ""),
        (61, "www-authenticate", ""),
    ];
    for (index, name, value) in cases {
        let expected = (name.as_bytes(), value.as_bytes());
        assert_eq!(STATIC_TABLE[index - 1], expected, "index {index}");
    }
}

#[test]
fn the_encoders_write_the_rfc_representations() {
    let encoded = |write: &dyn Fn(&mut BytesMut)| {
        let mut dst = BytesMut::new();
        write(&mut dst);
        dst.to_vec()
    };
    let both = |dst: &mut BytesMut| {
        encode_indexed(METHOD_POST, dst);
        encode_indexed(SCHEME_HTTPS, dst);
    };
    assert_eq!(encoded(&both), hex("83 87"));
    // C.2.2's field, written the same way.
    let path = |dst: &mut BytesMut| encode_literal_with_name_index(PATH, b"/sample/path", dst);
    assert_eq!(encoded(&path), hex("040c 2f73 616d 706c 652f 7061 7468"));
    // A name index above 14 takes a continuation octet with a 4-bit prefix: 60 = 15 + 45.
    let via = |dst: &mut BytesMut| encode_literal_with_name_index(VIA, b"2 sy", dst);
    assert_eq!(encoded(&via), hex("0f 2d 04 3220 7379"));
    let te = |dst: &mut BytesMut| encode_literal_new_name(b"te", b"trailers", dst);
    assert_eq!(encoded(&te), hex("00 02 7465 08 7472 6169 6c65 7273"));
    // A value of 200 octets: its length takes 127, then 73.
    let long = encoded(&|dst: &mut BytesMut| encode_literal_new_name(b"x", &[b'v'; 200], dst));
    assert_eq!(
        (&long[..5], long.len()),
        (&hex("00 01 78 7f 49")[..], 5 + 200)
    );
}

// ---------------------------------------------------------------------------------------------
// Properties.

/// The dynamic table as RFC 7541 §4 describes it, kept as simply as possible.
struct Model {
    entries: VecDeque<(Vec<u8>, Vec<u8>)>,
    size_bytes: usize,
    size_bytes_max: usize,
}

impl Model {
    fn evict_to(&mut self, size_bytes: usize) {
        while self.size_bytes > size_bytes {
            let (name, value) = self.entries.pop_back().expect("size counts entries");
            self.size_bytes -= name.len() + value.len() + 32;
        }
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let entry_bytes = name.len() + value.len() + 32;
        if entry_bytes > self.size_bytes_max {
            self.evict_to(0);
            return;
        }
        self.evict_to(self.size_bytes_max - entry_bytes);
        self.entries.push_front((name, value));
        self.size_bytes += entry_bytes;
    }
}

/// A name as a peer's encoder may give it: by static index, by dynamic position (a static
/// index while the dynamic table is empty), or as a new string.
#[derive(Debug, Clone)]
enum NameOp {
    Static(usize),
    Dynamic(prop::sample::Index),
    New(Vec<u8>),
}

/// A field as a peer's encoder may write it. A literal's kind is 0 for incremental indexing,
/// 1 for without indexing and 2 for never indexed; its flags say which strings are Huffman.
#[derive(Debug, Clone)]
enum Op {
    Static(usize),
    Dynamic(prop::sample::Index),
    Literal(NameOp, Vec<u8>, u8, [bool; 2]),
}

fn octets(length_max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..length_max)
}

fn op() -> impl Strategy<Value = Op> {
    let name = prop_oneof![
        (1..=61_usize).prop_map(NameOp::Static),
        any::<prop::sample::Index>().prop_map(NameOp::Dynamic),
        octets(24).prop_map(NameOp::New),
    ];
    let literal = (name, octets(120), 0..3_u8, any::<[bool; 2]>());
    prop_oneof![
        (1..=61_usize).prop_map(Op::Static),
        any::<prop::sample::Index>().prop_map(Op::Dynamic),
        literal.prop_map(|(name, value, kind, huffman)| Op::Literal(name, value, kind, huffman)),
    ]
}

/// The index (static or dynamic) a pick refers to, and its entry.
fn entry_of(model: &Model, pick: &prop::sample::Index) -> (usize, (Vec<u8>, Vec<u8>)) {
    if model.entries.is_empty() {
        let (name, value) = STATIC_TABLE[0];
        return (1, (name.to_vec(), value.to_vec()));
    }
    let position = pick.index(model.entries.len());
    (62 + position, model.entries[position].clone())
}

/// Writes one block as a peer's encoder would, and returns the list it stands for, keeping
/// the model table in step.
fn encode_block(
    model: &mut Model,
    update: Option<usize>,
    ops: &[Op],
    out: &mut BytesMut,
) -> Fields {
    if let Some(size_bytes) = update {
        encode_integer(size_bytes, 5, 0x20, out);
        model.size_bytes_max = size_bytes;
        model.evict_to(size_bytes);
    }
    let mut fields = Vec::new();
    for op in ops {
        let (flags, prefix_bits, name, value, huffman) = match op {
            Op::Static(index) => {
                encode_integer(*index, 7, 0x80, out);
                let (name, value) = STATIC_TABLE[index - 1];
                fields.push((name.to_vec(), value.to_vec()));
                continue;
            }
            Op::Dynamic(pick) => {
                let (index, entry) = entry_of(model, pick);
                encode_integer(index, 7, 0x80, out);
                fields.push(entry);
                continue;
            }
            Op::Literal(name, value, 0, huffman) => (0x40, 6, name, value, huffman),
            Op::Literal(name, value, 1, huffman) => (0x00, 4, name, value, huffman),
            Op::Literal(name, value, _, huffman) => (0x10, 4, name, value, huffman),
        };
        let name = match name {
            NameOp::Static(index) => {
                encode_integer(*index, prefix_bits, flags, out);
                STATIC_TABLE[index - 1].0.to_vec()
            }
            NameOp::Dynamic(pick) => {
                let (index, (name, _)) = entry_of(model, pick);
                encode_integer(index, prefix_bits, flags, out);
                name
            }
            NameOp::New(name) => {
                encode_integer(0, prefix_bits, flags, out);
                put_string(name, huffman[0], out);
                name.clone()
            }
        };
        put_string(value, huffman[1], out);
        fields.push((name.clone(), value.clone()));
        if flags == 0x40 {
            model.insert(name, value.clone());
        }
    }
    fields
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(
        table_bytes_max in 0..5000_usize,
        list_bytes_max in 0..10_000_usize,
        blocks in prop::collection::vec(octets(300), 1..5),
    ) {
        let mut decoder = Decoder::new(table_bytes_max);
        for block in &blocks {
            let mut list_bytes = 0;
            let result = decoder.decode(block, list_bytes_max, |name, value| {
                list_bytes += name.len() + value.len() + 32;
            });
            prop_assert!(list_bytes <= list_bytes_max);
            prop_assert!(decoder.table.size_bytes <= table_bytes_max);
            prop_assert!(decoder.table.arena.len() <= 2 * table_bytes_max);
            if result.is_err() {
                break;
            }
        }
    }

    #[test]
    fn corrupted_rfc_blocks_never_panic(
        sequence in 0..4_usize,
        position in any::<prop::sample::Index>(),
        octet in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let (table_bytes_max, blocks) = [(4096, C3), (4096, C4), (256, C5), (256, C6)][sequence];
        let mut decoder = Decoder::new(table_bytes_max);
        for block in blocks {
            let mut block = hex(block);
            let at = position.index(block.len());
            block[at] = octet;
            block.truncate(cut.index(block.len() + 1));
            let _ = decoder.decode(&block, usize::MAX, |_, _| {});
            prop_assert!(decoder.table.size_bytes <= table_bytes_max);
        }
    }

    #[test]
    fn the_public_encoders_round_trip(
        fields in prop::collection::vec((0..=61_usize, octets(40), octets(300), any::<bool>()), 0..12),
    ) {
        // Index 0 stands for a new name; other indices are written indexed or as a name.
        let mut block = BytesMut::new();
        let mut expected = Vec::new();
        for (index, name, value, indexed) in &fields {
            let static_entry = STATIC_TABLE.get(index.wrapping_sub(1)).copied();
            let entry = match (static_entry, indexed) {
                (None, _) => {
                    encode_literal_new_name(name, value, &mut block);
                    (name.clone(), value.clone())
                }
                (Some((name, value)), true) => {
                    encode_indexed(*index, &mut block);
                    (name.to_vec(), value.to_vec())
                }
                (Some((name, _)), false) => {
                    encode_literal_with_name_index(*index, value, &mut block);
                    (name.to_vec(), value.clone())
                }
            };
            expected.push(entry);
        }
        let mut decoder = Decoder::new(4096);
        prop_assert_eq!(decode_all(&mut decoder, &block), Ok(expected));
        prop_assert!(table_of(&decoder).is_empty(), "the client's fields are never indexed");
    }

    #[test]
    fn a_peers_blocks_decode_to_its_lists(
        table_bytes_max in 0..600_usize,
        blocks in prop::collection::vec(
            (
                prop::option::weighted(0.2, any::<prop::sample::Index>()),
                prop::collection::vec(op(), 0..10),
            ),
            1..8,
        ),
    ) {
        let mut decoder = Decoder::new(table_bytes_max);
        let entries = VecDeque::new();
        let mut model = Model { entries, size_bytes: 0, size_bytes_max: table_bytes_max };
        for (update, ops) in &blocks {
            let update = update.map(|pick| pick.index(table_bytes_max + 1));
            let mut block = BytesMut::new();
            let expected = encode_block(&mut model, update, ops, &mut block);
            prop_assert_eq!(decode_all(&mut decoder, &block), Ok(expected));
            let model_entries: Fields = model.entries.iter().cloned().collect();
            prop_assert_eq!(table_of(&decoder), model_entries);
            prop_assert_eq!(decoder.table.size_bytes, model.size_bytes);
            prop_assert!(decoder.table.arena.len() <= 2 * table_bytes_max);
        }
    }
}
