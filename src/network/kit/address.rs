//! Matrix users' addresses on a network's gateway domain.

use crate::network::NetworkError;

/// The gateway address of Matrix user `user_id` (`address`, as the connector's addressing
/// found it), or the permanent error that they have none on `network`, with the rule
/// that decides (`hint`) when there is one to tell.
pub fn gateway_address<T>(
    address: Option<T>,
    user_id: &str,
    network: &str,
    hint: Option<&str>,
) -> Result<T, NetworkError> {
    address.ok_or_else(|| {
        let why = match hint {
            Some(h) => format!("{user_id} has no {network} address ({h})"),
            None => format!("{user_id} has no {network} address"),
        };
        NetworkError::Undeliverable(why.into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Retry;

    #[test]
    fn no_address_is_a_permanent_failure_naming_the_user() {
        assert_eq!(gateway_address(Some(3), "@a:hs", "Foo", None).unwrap(), 3);
        for (hint, words) in [
            (None, "undeliverable: @B:hs has no Foo address"),
            (
                Some("only lowercase IDs have one"),
                "undeliverable: @B:hs has no Foo address (only lowercase IDs have one)",
            ),
        ] {
            let e = gateway_address::<u8>(None, "@B:hs", "Foo", hint).unwrap_err();
            assert_eq!(e.retry(), Retry::Never);
            assert_eq!(e.to_string(), words);
        }
    }
}
