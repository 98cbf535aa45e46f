//! Replication: every node reads the whole bus from the beginning, its own events included,
//! and merges each into its registry. A node reports ready once it has read up to the
//! high-water mark it saw at start, so a new or restarted gateway takes traffic only with a
//! registry at least as new as the bus was when it came up.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use switchyard_core::planted::{self, Bug};

use crate::node::Node;
use crate::seams::Backoff;

/// Records read per fetch.
pub const FETCH_RECORDS_MAX: usize = 512;
/// How long one fetch waits for new records before returning empty.
pub const FETCH_WAIT: Duration = Duration::from_millis(500);

pub async fn run(node: Arc<Node>, stop: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let target = loop {
        tokio::select! {
            () = stop.cancelled() => return,
            result = node.bus().high_water_mark() => match result {
                Ok(hwm) => break hwm,
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "cannot read the bus high-water mark; not ready");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    };
    node.set_catch_up_target(target);
    tracing::info!(target, "catching up from the bus");
    let mut position = 0u64;
    let mut caught_up = target == 0 || planted::active(Bug::ReadyBeforeCatchUp);
    if caught_up {
        node.mark_ready();
        tracing::info!("bus is empty: ready");
    }
    backoff.reset();
    loop {
        let fetched = tokio::select! {
            () = stop.cancelled() => return,
            fetched = node.bus().fetch(position, FETCH_RECORDS_MAX, FETCH_WAIT) => fetched,
        };
        match fetched {
            Ok(records) => {
                backoff.reset();
                for record in &records {
                    node.apply_record(record);
                    position = record.offset + 1;
                }
                node.set_position(position);
                if !caught_up && position >= target {
                    caught_up = true;
                    node.mark_ready();
                    tracing::info!(position, "caught up with the bus: ready");
                }
            }
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(%error, position, retry_in_ms = delay.as_millis() as u64, "bus read failed");
                tokio::time::sleep(delay).await;
            }
        }
    }
}
