//! The numbers commands take (ids, flags, amounts), checked before clap accepts them.

use net::TransferId;

/// A whole number in decimal or `0x`-hex.
fn parse_number(text: &str) -> Result<u128, String> {
    let (digits, radix) = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (text, 10),
    };
    // from_str_radix accepts a leading '+'; a number here is digits only.
    if digits.is_empty() || !digits.chars().all(|digit| digit.is_digit(radix)) {
        return Err(format!("{text:?} is not a decimal or 0x-hex number"));
    }
    u128::from_str_radix(digits, radix).map_err(|_| format!("{text} does not fit in 128 bits"))
}

/// A transfer (or deposit, withdrawal) id: a non-zero `u128` in decimal or `0x`-hex.
pub(super) fn parse_transfer_id(text: &str) -> Result<TransferId, String> {
    match parse_number(text)? {
        0 => Err("id 0 is reserved; ids start at 1".to_string()),
        id => Ok(id),
    }
}

/// Account flags: a `u32` in decimal or `0x`-hex.
pub(super) fn parse_flags(text: &str) -> Result<u32, String> {
    let flags = parse_number(text)?;
    u32::try_from(flags).map_err(|_| format!("flags {text} do not fit in 32 bits"))
}

/// An amount of money in minor units: a decimal `u64`, at least 1.
pub(super) fn parse_amount(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(0) => Err("an amount must be at least 1 minor unit".to_string()),
        Ok(amount) if text.chars().all(|digit| digit.is_ascii_digit()) => Ok(amount),
        _ => Err(format!(
            "{text:?} is not an amount: expected a whole number of minor units from 1 to {}",
            u64::MAX
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_ids_parse_in_decimal_and_hex() {
        assert_eq!(parse_transfer_id("1"), Ok(1));
        assert_eq!(parse_transfer_id("0x1f"), Ok(31));
        assert_eq!(parse_transfer_id("0XFF"), Ok(255));
        assert_eq!(parse_transfer_id(&u128::MAX.to_string()), Ok(u128::MAX));
        assert_eq!(
            parse_transfer_id(&format!("{:#x}", u128::MAX)),
            Ok(u128::MAX)
        );
        for bad in ["", "0x", "-1", "+1", "1e3", "0x1g", "12 ", " 12", "0b101"] {
            assert!(parse_transfer_id(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(
            parse_transfer_id("0").unwrap_err(),
            "id 0 is reserved; ids start at 1"
        );
        assert_eq!(
            parse_transfer_id("0x0").unwrap_err(),
            "id 0 is reserved; ids start at 1"
        );
        let too_big = format!("{}0", u128::MAX);
        assert_eq!(
            parse_transfer_id(&too_big).unwrap_err(),
            format!("{too_big} does not fit in 128 bits")
        );
    }

    #[test]
    fn amounts_and_flags_parse() {
        assert_eq!(parse_amount("1"), Ok(1));
        assert_eq!(parse_amount(&u64::MAX.to_string()), Ok(u64::MAX));
        assert_eq!(
            parse_amount("0").unwrap_err(),
            "an amount must be at least 1 minor unit"
        );
        for bad in ["", "-1", "+1", "1.5", "1e3", "18446744073709551616", "ten"] {
            let error = parse_amount(bad).expect_err(bad);
            assert!(error.contains("is not an amount"), "{error}");
        }
        assert_eq!(parse_flags("0x80000000"), Ok(1 << 31));
        assert!(parse_flags("0x100000000").is_err());
    }
}
