//! The process allocator's settings.
//!
//! The bridge's memory comes in bursts: a homeserver transaction of up to the body limit is
//! parsed and stored at once, and a media file passes through whole. jemalloc keeps freed
//! pages for reuse and purges them after a decay time, but without its background thread it
//! purges only when the process allocates again, so an idle bridge would keep the peak of its
//! last burst. [`tune`] starts that thread, so memory goes back within seconds of a burst.

use tracing::warn;

/// Starts jemalloc's background purging. Called once, at start-up; a failure only costs
/// memory, so it is logged and the bridge goes on.
pub fn tune() {
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        warn!(error = %e, "could not start the allocator's background purging; memory freed after a burst may stay with the process");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn background_purging_starts() {
        super::tune();
        assert_eq!(tikv_jemalloc_ctl::background_thread::read(), Ok(true));
    }
}
