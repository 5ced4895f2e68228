//! Decimal text of integers without the formatting machinery: heads and access log lines are
//! written per request, and `format!` or `Display` costs an allocation or a dozen calls for a
//! three-digit number.

/// Room for any `u64`.
pub(crate) type Digits = [u8; 20];

/// `value` in decimal, as a slice of `buf` (ASCII digits; bytes, because every caller
/// appends them to bytes, and a `str` would be validated again for nothing).
pub(crate) fn decimal(value: u64, buf: &mut Digits) -> &[u8] {
    padded(value, 1, buf)
}

/// `value` in decimal, zero-padded to at least `width` digits (at most 20).
pub(crate) fn padded(mut value: u64, width: usize, buf: &mut Digits) -> &[u8] {
    *buf = [b'0'; 20];
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    start = start.min(buf.len() - width.min(buf.len()));
    &buf[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        for value in [0, 7, 10, 200, 404, 65_535, u64::MAX] {
            assert_eq!(decimal(value, &mut [0; 20]), value.to_string().as_bytes());
        }
    }
}
