//! Input validation, shared by the API (before a command is proposed, so malformed or
//! oversized commands never reach the log) and by apply (so the state machine is total
//! even over a log written by an older or buggy proposer).
//!
//! Each failure names the field: `Reject::Invalid { field, reason }`.

use crate::limits::*;
use crate::types::{Command, Reject, SaleSpec};

type Check = Result<(), Reject>;

/// Everything a proposer checks before a command may enter the log: its shape and
/// limits, every command inside a batch, and the encoded size.
pub fn proposal(cmd: &Command) -> Check {
    command(cmd)?;
    if let Command::Batch(cmds) = cmd {
        cmds.iter().try_for_each(command)?;
    }
    let len = crate::codec::encoded_len("command", cmd)
        .map_err(|e| Reject::invalid("command", e.to_string()))?;
    if len > COMMAND_BYTES_MAX {
        return Err(Reject::invalid(
            "command",
            format!("encodes to {len} bytes, above {COMMAND_BYTES_MAX}"),
        ));
    }
    Ok(())
}

/// Validates a command's shape and limits. Pure: no state, no clock.
pub fn command(cmd: &Command) -> Check {
    match cmd {
        Command::CreateSale(spec) | Command::UpdateSale(spec) => sale_spec(spec),
        Command::EndSale { sale_id } => sale_id_field("sale_id", sale_id),
        Command::Reserve {
            sale_id,
            user_id,
            qty,
            request_id,
        }
        | Command::JoinWaitlist {
            sale_id,
            user_id,
            qty,
            request_id,
        } => {
            client(user_id, request_id)?;
            sale_id_field("sale_id", sale_id)?;
            qty_field(*qty)
        }
        Command::Release {
            user_id,
            request_id,
            ..
        }
        | Command::Checkout {
            user_id,
            request_id,
            ..
        }
        | Command::CancelOrder {
            user_id,
            request_id,
            ..
        } => client(user_id, request_id),
        Command::ConfirmPayment {
            user_id,
            amount_minor,
            currency,
            payment_ref,
            request_id,
            ..
        } => {
            client(user_id, request_id)?;
            if *amount_minor > PRICE_MINOR_MAX.saturating_mul(u64::from(QTY_PER_HOLD_MAX)) {
                return Err(Reject::invalid("amount_minor", "too large"));
            }
            currency_field(currency)?;
            token("payment_ref", payment_ref, PAYMENT_REF_BYTES_MAX)
        }
        Command::FailPayment {
            user_id,
            reason,
            request_id,
            ..
        } => {
            client(user_id, request_id)?;
            text("reason", reason, 0, REASON_BYTES_MAX)
        }
        Command::LeaveWaitlist {
            sale_id,
            user_id,
            request_id,
        } => {
            client(user_id, request_id)?;
            sale_id_field("sale_id", sale_id)
        }
        Command::Tick => Ok(()),
        Command::Batch(cmds) => {
            if cmds.is_empty() {
                return Err(Reject::invalid("batch", "empty"));
            }
            if cmds.len() > BATCH_COMMANDS_MAX {
                return Err(Reject::invalid(
                    "batch",
                    format!("more than {BATCH_COMMANDS_MAX} commands"),
                ));
            }
            if cmds.iter().any(|c| matches!(c, Command::Batch(_))) {
                return Err(Reject::invalid("batch", "batches do not nest"));
            }
            // Each inner command is validated (and may be rejected) on its own when applied.
            Ok(())
        }
    }
}

/// Validates a sale spec (before it starts, an update must pass the same checks).
pub fn sale_spec(s: &SaleSpec) -> Check {
    sale_id_field("id", &s.id)?;
    text("product.sku", &s.product.sku, 1, SKU_BYTES_MAX)?;
    text("product.name", &s.product.name, 1, PRODUCT_NAME_BYTES_MAX)?;
    text(
        "product.description",
        &s.product.description,
        0,
        PRODUCT_DESCRIPTION_BYTES_MAX,
    )?;
    if !s.product.image_url.is_empty() {
        text(
            "product.image_url",
            &s.product.image_url,
            1,
            IMAGE_URL_BYTES_MAX,
        )?;
        if !(s.product.image_url.starts_with("https://")
            || s.product.image_url.starts_with("http://"))
        {
            return Err(Reject::invalid(
                "product.image_url",
                "must be an http(s) URL",
            ));
        }
        if s.product.image_url.chars().any(|c| c.is_whitespace()) {
            return Err(Reject::invalid(
                "product.image_url",
                "must not contain whitespace",
            ));
        }
    }
    if s.list_price_minor > PRICE_MINOR_MAX {
        return Err(Reject::invalid(
            "list_price_minor",
            format!("at most {PRICE_MINOR_MAX}"),
        ));
    }
    if s.sale_price_minor > PRICE_MINOR_MAX {
        return Err(Reject::invalid(
            "sale_price_minor",
            format!("at most {PRICE_MINOR_MAX}"),
        ));
    }
    if s.sale_price_minor > s.list_price_minor {
        return Err(Reject::invalid("sale_price_minor", "above the list price"));
    }
    currency_field(&s.currency)?;
    if s.quantity == 0 || s.quantity > SALE_QUANTITY_MAX {
        return Err(Reject::invalid(
            "quantity",
            format!("must be 1..={SALE_QUANTITY_MAX}"),
        ));
    }
    if s.starts_at_ms > TIMESTAMP_MS_MAX {
        return Err(Reject::invalid(
            "starts_at_ms",
            "not a millisecond Unix timestamp",
        ));
    }
    if s.ends_at_ms > TIMESTAMP_MS_MAX {
        return Err(Reject::invalid(
            "ends_at_ms",
            "not a millisecond Unix timestamp",
        ));
    }
    if s.ends_at_ms <= s.starts_at_ms {
        return Err(Reject::invalid("ends_at_ms", "must be after starts_at_ms"));
    }
    if s.ends_at_ms - s.starts_at_ms > SALE_DURATION_MS_MAX {
        return Err(Reject::invalid(
            "ends_at_ms",
            format!("a sale lasts at most {SALE_DURATION_MS_MAX} ms"),
        ));
    }
    if s.per_user_limit == 0 || s.per_user_limit > PER_USER_LIMIT_MAX {
        return Err(Reject::invalid(
            "per_user_limit",
            format!("must be 1..={PER_USER_LIMIT_MAX}"),
        ));
    }
    if !(HOLD_TTL_MS_MIN..=HOLD_TTL_MS_MAX).contains(&s.hold_ttl_ms) {
        return Err(Reject::invalid(
            "hold_ttl_ms",
            format!("must be {HOLD_TTL_MS_MIN}..={HOLD_TTL_MS_MAX}"),
        ));
    }
    if s.payment_window_ms > PAYMENT_WINDOW_MS_MAX {
        return Err(Reject::invalid(
            "payment_window_ms",
            format!("at most {PAYMENT_WINDOW_MS_MAX}"),
        ));
    }
    Ok(())
}

fn client(user_id: &str, request_id: &str) -> Check {
    user_id_field(user_id)?;
    token("request_id", request_id, REQUEST_ID_BYTES_MAX)
}

/// A sale id: a lower-case slug, `[a-z0-9][a-z0-9-]*`.
pub fn sale_id_field(field: &str, id: &str) -> Check {
    if id.is_empty() || id.len() > SALE_ID_BYTES_MAX {
        return Err(Reject::invalid(
            field,
            format!("must be 1..={SALE_ID_BYTES_MAX} bytes"),
        ));
    }
    let ok_char = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-';
    if !id.bytes().all(ok_char) || id.starts_with('-') {
        return Err(Reject::invalid(
            field,
            "must be a slug: a-z, 0-9 and '-', not starting with '-'",
        ));
    }
    Ok(())
}

/// A user id: `[A-Za-z0-9_.:@-]`, as issued by the caller's identity system.
pub fn user_id_field(id: &str) -> Check {
    if id.is_empty() || id.len() > USER_ID_BYTES_MAX {
        return Err(Reject::invalid(
            "user_id",
            format!("must be 1..={USER_ID_BYTES_MAX} bytes"),
        ));
    }
    if !id
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || b"_.:@-".contains(&c))
    {
        return Err(Reject::invalid(
            "user_id",
            "allowed characters are A-Z a-z 0-9 _ . : @ -",
        ));
    }
    Ok(())
}

fn qty_field(qty: u32) -> Check {
    if qty == 0 || qty > QTY_PER_HOLD_MAX {
        return Err(Reject::invalid(
            "qty",
            format!("must be 1..={QTY_PER_HOLD_MAX}"),
        ));
    }
    Ok(())
}

fn currency_field(c: &str) -> Check {
    if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Reject::invalid(
            "currency",
            "must be an ISO 4217 code, three upper-case letters",
        ));
    }
    Ok(())
}

/// Printable ASCII without spaces (request ids, payment references).
fn token(field: &str, s: &str, max: usize) -> Check {
    if s.is_empty() || s.len() > max {
        return Err(Reject::invalid(field, format!("must be 1..={max} bytes")));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Reject::invalid(
            field,
            "must be printable ASCII without spaces",
        ));
    }
    Ok(())
}

/// Free text: UTF-8 within a byte budget, no control characters (newlines allowed).
fn text(field: &str, s: &str, min: usize, max: usize) -> Check {
    if s.len() < min || s.len() > max {
        return Err(Reject::invalid(
            field,
            format!("must be {min}..={max} bytes"),
        ));
    }
    if s.chars().any(|c| c.is_control() && c != '\n') {
        return Err(Reject::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(user: &str) -> Command {
        Command::JoinWaitlist {
            sale_id: "s".into(),
            user_id: user.into(),
            qty: 1,
            request_id: "r".into(),
        }
    }

    #[test]
    fn proposals_are_checked_inside_batches_and_by_size() {
        assert!(proposal(&Command::Batch(vec![join("a"), join("b")])).is_ok());
        let bad = proposal(&Command::Batch(vec![join("a"), join("b c")]));
        assert!(
            matches!(bad, Err(Reject::Invalid { ref field, .. }) if field == "user_id"),
            "{bad:?}"
        );
        assert!(proposal(&Command::Batch(vec![])).is_err());
        assert!(proposal(&Command::Batch(vec![Command::Batch(vec![Command::Tick])])).is_err());
        // A group-commit batch of the most client commands, each the largest a client can
        // send (a failed payment with the longest reason), stays under the size limit.
        let big = Command::FailPayment {
            user_id: "u".repeat(USER_ID_BYTES_MAX),
            order_id: u64::MAX,
            reason: "x".repeat(REASON_BYTES_MAX),
            request_id: "r".repeat(REQUEST_ID_BYTES_MAX),
        };
        assert!(proposal(&Command::Batch(vec![big.clone(); BATCH_COMMANDS_MAX])).is_ok());
        let mut spec_cmd = Command::Batch(vec![big; BATCH_COMMANDS_MAX + 1]);
        assert!(proposal(&spec_cmd).is_err());
        if let Command::Batch(v) = &mut spec_cmd {
            v.truncate(1);
        }
        assert!(proposal(&spec_cmd).is_ok());
    }

    #[test]
    fn ids_reject_the_separator_byte_and_other_bad_characters() {
        assert!(user_id_field("alice@example.com").is_ok());
        assert!(user_id_field("a\0b").is_err());
        assert!(user_id_field("").is_err());
        assert!(user_id_field(&"x".repeat(USER_ID_BYTES_MAX + 1)).is_err());
        assert!(sale_id_field("id", "spring-drop-2026").is_ok());
        assert!(sale_id_field("id", "Spring").is_err());
        assert!(sale_id_field("id", "-x").is_err());
        assert!(token("request_id", "r 1", 64).is_err());
        assert!(token("request_id", "r\u{0}1", 64).is_err());
    }
}
