//! The two input modes of the `http2` target, decoded into a [`Script`]. The structured
//! mode's frames are in `input/frames.rs`.

use arbitrary::{Arbitrary, Unstructured};
use switchyard_core::http2::client::{CallLimits, Config};

use super::model::kind;
use super::{CallSpec, Feed, Op, Script};

mod frames;

use frames::{AnswerIn, SettingIn, frame};
pub(super) use frames::{FrameIn, build};

/// The node's settings (`forwarding/unary.rs`), and two with small windows and bounds so that
/// short inputs reach the client's WINDOW_UPDATEs, its header list bound and `Full`.
const CONFIGS: [Config; 3] = [
    Config {
        stream_window_bytes: 2 << 20,
        connection_window_bytes: 5 << 20,
        header_list_bytes_max: 16 * 1024,
        calls_max: 16 * 1024,
    },
    Config {
        stream_window_bytes: 1000,
        connection_window_bytes: 3000,
        header_list_bytes_max: 1024,
        calls_max: 3,
    },
    Config {
        stream_window_bytes: 65_535,
        connection_window_bytes: 65_535,
        header_list_bytes_max: 16 * 1024,
        calls_max: 4,
    },
];
/// Message sizes around the frame size and the default window.
const SIZES: &[usize] = &[0, 1, 5, 100, 16_384, 65_535, 65_536, 70_000, 200_000];
/// Bounds on an answer's message.
const LIMITS: &[usize] = &[0, 5, 16, 100, 1024, 16_384, 65_536, 100_000];
pub(super) fn pick<T: Copy>(list: &[T], i: u8) -> T {
    list[usize::from(i) % list.len()]
}

/// Decodes one input; `None` for one that is not a script.
pub(super) fn script(data: &[u8]) -> Option<Script> {
    let (&mode, rest) = data.split_first()?;
    if mode & 1 == 0 {
        Some(raw(rest))
    } else {
        let input = Input::arbitrary_take_rest(Unstructured::new(rest)).ok()?;
        Some(input.script())
    }
}

/// Raw mode: `config`, `calls` (1 to 4), a byte per call (size and bound), `cuts` (0 to 7),
/// two bytes per cut (a piece length and what to do after it), then the instance's bytes.
fn raw(data: &[u8]) -> Script {
    let mut bytes = data.iter().copied();
    let mut next = || bytes.next().unwrap_or(0);
    let config = pick(&CONFIGS, next());
    let mut ops = Vec::new();
    for _ in 0..=next() % 4 {
        ops.push(Op::Open(raw_call(next())));
    }
    let cuts: Vec<(u8, u8)> = (0..next() % 8).map(|_| (next(), next())).collect();
    let header = data.len().min(3 + ops.len() + 2 * cuts.len());
    let mut wire = &data[header..];
    for (len, action) in &cuts {
        let (piece, rest) = wire.split_at(usize::from(*len).min(wire.len()));
        wire = rest;
        ops.push(Op::Feed(Feed::Bytes(piece.to_vec())));
        let call = usize::from(action >> 4);
        if action & 1 != 0 {
            ops.extend((0..8).map(Op::Poll));
        }
        if action & 2 != 0 {
            ops.push(Op::Cancel(call));
        }
        if action & 4 != 0 {
            ops.push(Op::Ping([*action; 8]));
        }
        if action & 8 != 0 {
            ops.push(Op::Open(raw_call(*action)));
        }
    }
    ops.push(Op::Feed(Feed::Bytes(wire.to_vec())));
    let turn = data.len() % 6;
    let mut cuts = vec![1, 2, 3, 5, 8, 13];
    cuts.rotate_left(turn);
    Script { config, ops, cuts }
}

fn raw_call(b: u8) -> CallSpec {
    CallSpec {
        message_bytes: pick(SIZES, b & 0x0f),
        limits: CallLimits {
            message_bytes_max: pick(LIMITS, b >> 4),
        },
        big_block: b == 0xff,
    }
}

/// One structured input.
#[derive(Debug, Arbitrary)]
struct Input {
    config: u8,
    calls: Vec<CallIn>,
    /// The instance's SETTINGS, first, as its preface (RFC 9113 §3.4); none when the byte
    /// is 0.
    preface: (u8, Vec<SettingIn>),
    steps: Vec<Step>,
    cuts: Vec<u8>,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
struct CallIn {
    size: u8,
    limit: u8,
    big_block: bool,
}

impl CallIn {
    fn spec(self) -> CallSpec {
        CallSpec {
            message_bytes: pick(SIZES, self.size),
            limits: CallLimits {
                message_bytes_max: pick(LIMITS, self.limit),
            },
            big_block: self.big_block,
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Step {
    Answer(Box<AnswerIn>),
    Frame(FrameIn),
    /// Several frames in one piece.
    Frames(Vec<FrameIn>),
    Open(CallIn),
    Poll(u8),
    Cancel(u8),
    Ping(u8),
    Fail,
    /// PINGs or SETTINGS in one piece: 1 to 8, or (for `extra` past 230) 1,012 to 1,036,
    /// about the client's bound of 1,024 control frames to answer between two
    /// `take_output`s.
    Flood {
        settings: bool,
        extra: u8,
    },
}

impl Input {
    fn script(self) -> Script {
        let config = pick(&CONFIGS, self.config);
        let mut ops: Vec<Op> = self
            .calls
            .iter()
            .take(6)
            .map(|c| Op::Open(c.spec()))
            .collect();
        if let (1.., pairs) = self.preface {
            ops.push(Op::Feed(Feed::Frames(vec![FrameIn::Settings {
                ack: false,
                pairs,
            }])));
        }
        for step in self.steps.into_iter().take(48) {
            ops.push(match step {
                Step::Answer(a) => Op::Feed(Feed::Frames(vec![FrameIn::Answer(a)])),
                Step::Frame(f) => Op::Feed(Feed::Frames(vec![f])),
                Step::Frames(fs) => Op::Feed(Feed::Frames(fs.into_iter().take(16).collect())),
                Step::Open(c) => Op::Open(c.spec()),
                Step::Poll(i) => Op::Poll(usize::from(i)),
                Step::Cancel(i) => Op::Cancel(usize::from(i)),
                Step::Ping(b) => Op::Ping([b; 8]),
                Step::Fail => Op::Fail,
                Step::Flood { settings, extra } => {
                    let count = match extra {
                        231.. => 1012 + usize::from(extra - 231),
                        _ => usize::from(extra % 8) + 1,
                    };
                    let mut bytes = Vec::new();
                    for i in 0..count {
                        if settings {
                            frame(&mut bytes, kind::SETTINGS, 0, 0, &[]);
                        } else {
                            frame(&mut bytes, kind::PING, 0, 0, &(i as u64).to_be_bytes());
                        }
                    }
                    Op::Feed(Feed::Bytes(bytes))
                }
            });
        }
        let mut cuts: Vec<usize> = self.cuts.iter().map(|&c| usize::from(c) + 1).collect();
        if cuts.is_empty() {
            cuts.push(7);
        }
        Script { config, ops, cuts }
    }
}
