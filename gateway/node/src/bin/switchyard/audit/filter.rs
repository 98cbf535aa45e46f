//! What `switchyard audit tail` is asked to show: the parsers of `--status` and `--since`,
//! and the filter a decoded record passes or not.

#[cfg(feature = "kafka")]
use switchyard_proto::audit::{AuditRecord, audit_record::Kind};

/// The longest `--since`: a year. Kafka keeps less than that in practice; the bound is for
/// the arithmetic.
pub const SINCE_S_MAX: u64 = 365 * 24 * 3600;

/// `--status`: a class (`5xx`) or one code (`404`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// The hundreds digit: `5` for `5xx`.
    Class(u32),
    Code(u32),
}

#[cfg(feature = "kafka")]
impl StatusFilter {
    pub fn matches(self, status: u32) -> bool {
        match self {
            StatusFilter::Class(class) => status / 100 == class,
            StatusFilter::Code(code) => status == code,
        }
    }
}

/// Parses `--status`: `1xx` to `5xx` (either case) or a code from 100 to 599.
pub fn parse_status(text: &str) -> Result<StatusFilter, String> {
    let wrong = || format!("{text:?}: expected a class (1xx to 5xx) or a status code (100 to 599)");
    let bytes = text.as_bytes();
    if bytes.len() != 3 {
        return Err(wrong());
    }
    let class = match bytes[0] {
        b @ b'1'..=b'5' => u32::from(b - b'0'),
        _ => return Err(wrong()),
    };
    if bytes[1..].eq_ignore_ascii_case(b"xx") {
        return Ok(StatusFilter::Class(class));
    }
    if bytes[1..].iter().all(u8::is_ascii_digit) {
        let code = class * 100 + u32::from(bytes[1] - b'0') * 10 + u32::from(bytes[2] - b'0');
        return Ok(StatusFilter::Code(code));
    }
    Err(wrong())
}

/// Parses `--since`: a whole number followed by `s`, `m`, `h` or `d`, at most a year; the
/// answer in seconds.
pub fn parse_since(text: &str) -> Result<u64, String> {
    let wrong = || format!("{text:?}: expected a duration like 30s, 10m, 2h or 1d (at most 365d)");
    let split = text.len().checked_sub(1).ok_or_else(wrong)?;
    if !text.is_char_boundary(split) {
        return Err(wrong());
    }
    let (number, unit) = text.split_at(split);
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(wrong());
    }
    let unit_s = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 24 * 3600,
        _ => return Err(wrong()),
    };
    let value: u64 = number.parse().map_err(|_| wrong())?;
    let seconds = value.checked_mul(unit_s).ok_or_else(wrong)?;
    if seconds == 0 || seconds > SINCE_S_MAX {
        return Err(wrong());
    }
    Ok(seconds)
}

/// What a record must be to be shown.
#[cfg(feature = "kafka")]
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub service: Option<String>,
    pub status: Option<StatusFilter>,
}

#[cfg(feature = "kafka")]
impl Filter {
    pub fn admits(&self, record: &AuditRecord) -> bool {
        let (service, status) = match &record.kind {
            Some(Kind::Request(r)) => (r.service.as_str(), Some(r.status)),
            Some(Kind::Registry(r)) => (r.service.as_str(), None),
            None => ("", None),
        };
        if self.service.as_deref().is_some_and(|s| s != service) {
            return false;
        }
        match (self.status, status) {
            (None, _) => true,
            (Some(filter), Some(status)) => filter.matches(status),
            // A registry record has no status: a status filter leaves it out.
            (Some(_), None) => false,
        }
    }
}
