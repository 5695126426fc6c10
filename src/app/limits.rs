//! The process's open-files limit and the connection cap derived from it.

/// The open-files limit (RLIMIT_NOFILE): the soft limit found at start, and the soft and
/// hard limits after raising the soft one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit the process started with.
    pub before: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

/// Raises the soft open-files limit to the hard limit: each connection (appservice,
/// XMPP, SIP) and each sled file takes a descriptor, and the usual soft default of 1024 is
/// far below what the system allows. `u64::MAX` stands for "unlimited".
pub fn raise_open_files() -> std::io::Result<OpenFiles> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let current = getrlimit(Resource::Nofile);
    let before = current.current.unwrap_or(u64::MAX);
    let hard = current.maximum.unwrap_or(u64::MAX);
    if before >= hard {
        return Ok(OpenFiles {
            before,
            soft: before,
            hard,
        });
    }
    let mut raised = current;
    raised.current = current.maximum;
    setrlimit(Resource::Nofile, raised).map_err(std::io::Error::from)?;
    let now = getrlimit(Resource::Nofile);
    Ok(OpenFiles {
        before,
        soft: now.current.unwrap_or(u64::MAX),
        hard,
    })
}

/// The connection cap of the appservice listener: the configured one, lowered to leave a
/// quarter of the open-files limit (at least 64 descriptors) to the rest of the bridge.
pub fn connection_cap(configured: usize, files: Option<OpenFiles>) -> usize {
    let Some(files) = files else {
        return configured;
    };
    let reserve = (files.soft / 4).max(64);
    let fit = usize::try_from(files.soft.saturating_sub(reserve)).unwrap_or(usize::MAX);
    configured.min(fit.max(16))
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    #[test]
    fn the_connection_cap_leaves_room_below_the_open_files_limit() {
        let files = |soft| {
            Some(OpenFiles {
                before: 1024,
                soft,
                hard: soft,
            })
        };
        assert_eq!(connection_cap(4096, None), 4096);
        assert_eq!(connection_cap(4096, files(1024)), 768);
        assert_eq!(connection_cap(4096, files(1 << 20)), 4096);
        assert_eq!(connection_cap(4096, files(u64::MAX)), 4096);
        assert_eq!(connection_cap(4096, files(40)), 16);
    }

    #[test]
    fn the_soft_open_files_limit_is_raised_to_the_hard_one() {
        let f = raise_open_files().unwrap();
        assert_eq!(f.soft, f.hard);
        assert!(f.soft >= f.before);
    }
}
