//! Tests of the core's error policy: each failure's verdict, and causes kept.

use super::*;

fn network(source: NetworkError) -> BridgeError {
    BridgeError::Network {
        network: NetworkId::new("net"),
        source,
    }
}

fn api(status: u16) -> BridgeError {
    BridgeError::Matrix(MatrixError::Api {
        status,
        errcode: String::new(),
        message: String::new(),
    })
}

#[test]
fn each_failure_gets_the_failure_models_verdict() {
    // Outages: waited out, not counted.
    assert_eq!(
        network(NetworkError::Down("x".into())).retry(),
        Retry::Outage
    );
    assert_eq!(
        BridgeError::Matrix(MatrixError::Http("x".into())).retry(),
        Retry::Outage
    );
    let db = sled::Error::Io(std::io::Error::other("disk full"));
    assert_eq!(
        BridgeError::Store(StoreError::Db(db)).retry(),
        Retry::Outage
    );
    // Passing failures of the item: retried and counted.
    assert_eq!(
        network(NetworkError::Transient("x".into())).retry(),
        Retry::Transient
    );
    assert_eq!(api(502).retry(), Retry::Transient);
    assert_eq!(api(429).retry(), Retry::Transient);
    let ended = JobError::Ended(QueueKey::Room("!r:hs".into()));
    assert_eq!(BridgeError::Queue(ended).retry(), Retry::Transient);
    // Permanent.
    for e in [
        network(NetworkError::Undeliverable("x".into())),
        network(NetworkError::Internal("x".into())),
        network(NetworkError::InvalidInput("x".into())),
        network(NetworkError::BadCredentials("x".into())),
        network(NetworkError::Unsupported("x")),
        network(NetworkError::NotLoggedIn),
        api(403),
        api(404),
        BridgeError::Invalid("x".into()),
        BridgeError::Store(StoreError::InvalidDump("x".into())),
        BridgeError::Queue(JobError::Circular(QueueKey::Room("!r:hs".into()))),
    ] {
        assert_eq!(e.retry(), Retry::Never, "{e}");
        assert!(!e.is_transient());
    }
}

#[test]
fn the_cause_is_kept_under_the_same_words() {
    let parse = ruma::UserId::parse("not a user").unwrap_err();
    let e = user_id("not a user").unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("invalid event: bad user ID not a user: {parse}")
    );
    let reason = std::error::Error::source(&e).expect("a reason");
    assert!(
        std::error::Error::source(reason).is_some(),
        "the parse error is kept"
    );
    assert_eq!(crate::error::chain(&e).to_string(), e.to_string());
}
